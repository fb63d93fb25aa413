#include "train/checkpoint.h"

#include <filesystem>
#include <set>

#include "train/safetensors.h"

namespace ampipe {

namespace fs = std::filesystem;

static std::string model_path(const std::string& dir) { return (fs::path(dir) / "model.safetensors").string(); }
static std::string optimizer_path(const std::string& dir) {
  return (fs::path(dir) / "optimizer.safetensors").string();
}

void save_checkpoint(const std::string& dir, const GptMoe& model, const AdamW& optimizer,
                     const TrainingProgress& progress) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  AMPIPE_CHECK(!ec) << "cannot create checkpoint directory '" << dir << "': " << ec.message();
  const std::string iteration = std::to_string(progress.iteration);

  std::map<std::string, std::string> opt_meta = {{"iteration", iteration},
                                                 {"optimizer_steps", std::to_string(optimizer.steps_taken())},
                                                 {"seed", std::to_string(progress.seed)},
                                                 {"format", "ampipe-optimizer-v1"}};
  write_safetensors(optimizer_path(dir), optimizer.state_tensors(), opt_meta);

  std::vector<std::pair<std::string, Tensor>> weights;
  for (const Parameter& p : model.params().all()) weights.emplace_back(p.name, p.value);
  std::map<std::string, std::string> meta = model.config().to_metadata();
  meta["iteration"] = iteration;
  write_safetensors(model_path(dir), weights, meta);
}

ModelConfig read_checkpoint_config(const std::string& dir) {
  const std::string path = model_path(dir);
  AMPIPE_CHECK(fs::exists(path)) << "no checkpoint at '" << dir << "' (missing " << path << ")";
  SafetensorsFile file = read_safetensors(path);
  return ModelConfig::from_metadata(file.metadata);
}

void load_model_weights(const std::string& dir, GptMoe& model) {
  const std::string path = model_path(dir);
  AMPIPE_CHECK(fs::exists(path)) << "no checkpoint at '" << dir << "' (missing " << path << ")";
  SafetensorsFile file = read_safetensors(path);
  ModelConfig stored = ModelConfig::from_metadata(file.metadata);
  const std::string diff = stored.differences(model.config());
  AMPIPE_CHECK(diff.empty()) << "checkpoint '" << dir << "' was saved with a different model config ("
                             << "checkpoint vs flags: " << diff << ")";
  std::set<std::string> unused;
  for (const auto& [name, t] : file.tensors) unused.insert(name);
  for (Parameter& p : model.params().all()) {
    auto it = file.tensors.find(p.name);
    AMPIPE_CHECK(it != file.tensors.end()) << "checkpoint " << path << " lacks tensor '" << p.name << "'";
    AMPIPE_CHECK(it->second.dtype() == DType::F32 && it->second.shape() == p.value.shape())
        << "checkpoint tensor '" << p.name << "' is " << dtype_name(it->second.dtype()) << " "
        << shape_string(it->second.shape()) << ", the model needs float32 " << shape_string(p.value.shape());
    p.value.copy_from(it->second);
    unused.erase(p.name);
  }
  AMPIPE_CHECK(unused.empty()) << "checkpoint " << path << " has unexpected tensor '" << *unused.begin() << "'";
}

TrainingProgress load_training_state(const std::string& dir, AdamW& optimizer) {
  SafetensorsFile model_file = read_safetensors(model_path(dir));
  const std::string path = optimizer_path(dir);
  AMPIPE_CHECK(fs::exists(path)) << "checkpoint '" << dir << "' has no optimizer state (" << path
                                 << "); it cannot resume training";
  SafetensorsFile file = read_safetensors(path);
  auto get = [&](const SafetensorsFile& f, const std::string& p, const char* key) -> std::string {
    auto it = f.metadata.find(key);
    AMPIPE_CHECK(it != f.metadata.end()) << p << " lacks metadata '" << key << "'";
    return it->second;
  };
  const std::string model_iter = get(model_file, model_path(dir), "iteration");
  const std::string opt_iter = get(file, path, "iteration");
  AMPIPE_CHECK(model_iter == opt_iter) << "checkpoint '" << dir << "' is inconsistent: model at iteration "
                                       << model_iter << ", optimizer at " << opt_iter
                                       << " (interrupted save?)";
  TrainingProgress progress;
  try {
    progress.iteration = std::stoll(opt_iter);
    progress.seed = std::stoull(get(file, path, "seed"));
    const int64_t steps = std::stoll(get(file, path, "optimizer_steps"));
    std::vector<std::pair<std::string, Tensor>> tensors(file.tensors.begin(), file.tensors.end());
    optimizer.load_state(tensors, steps);
  } catch (const std::invalid_argument&) {
    AMPIPE_CHECK(false) << path << " has malformed metadata";
  } catch (const std::out_of_range&) {
    AMPIPE_CHECK(false) << path << " has malformed metadata";
  }
  return progress;
}

}  // namespace ampipe

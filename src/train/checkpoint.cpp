#include "train/checkpoint.h"

#include <filesystem>
#include <set>

#include "core/atomic_file.h"
#include "train/hf_checkpoint.h"
#include "train/safetensors.h"

namespace ampipe {

namespace fs = std::filesystem;

static std::string model_path(const std::string& dir) {
  return (fs::path(dir) / "model.safetensors").string();
}
static std::string optimizer_path(const std::string& dir) {
  return (fs::path(dir) / "optimizer.safetensors").string();
}

// The whole [E, ...] tensor of an expert parameter (gathered over the expert group), else `local`.
static Tensor gathered(const Parameter& p, const Tensor& local, const TrainingGroups* groups,
                       int64_t experts) {
  if (!p.is_expert || groups == nullptr || groups->expert_parallel_size <= 1) return local;
  Shape full = local.shape();
  full[0] = experts;
  Tensor out = Tensor::empty(full);
  groups->expert_group->all_gather(local.is_contiguous() ? local : local.clone(), out);
  return out;
}

// This rank's slice of a whole expert tensor from a file.
static Tensor local_slice(const Parameter& p, const Tensor& whole) {
  if (!p.is_expert) return whole;
  return whole.rows(p.expert_offset, p.expert_offset + p.value.dim(0));
}

static Shape whole_shape(const Parameter& p, int64_t experts) {
  Shape s = p.value.shape();
  if (p.is_expert) s[0] = experts;
  return s;
}

std::string checkpoint_tokenizer_path(const std::string& dir) { return (fs::path(dir) / "tokenizer.model").string(); }

std::unique_ptr<Tokenizer> checkpoint_tokenizer(const std::string& dir, const ModelConfig& config,
                                                const std::string& override_model) {
  const std::string& recorded = config.tokenizer;
  if (recorded == "byte" && override_model.empty()) return make_tokenizer("byte", "");
  AMPIPE_CHECK(recorded != "byte") << "'" << dir << "' was trained with the byte-level tokenizer; --tokenizer-model '"
                                   << override_model << "' does not belong to it";
  const std::string path = override_model.empty() ? checkpoint_tokenizer_path(dir) : override_model;
  AMPIPE_CHECK(fs::exists(path)) << "'" << dir << "' was trained with tokenizer " << recorded << ", but '" << path
                                 << "' does not exist; pass its .model file with --tokenizer-model";
  std::unique_ptr<Tokenizer> tokenizer = make_tokenizer("SentencePieceTokenizer", path);
  AMPIPE_CHECK(tokenizer->identity() == recorded)
      << "tokenizer '" << path << "' is " << tokenizer->identity() << ", but '" << dir << "' was trained with "
      << recorded << "; a model paired with another tokenizer would read garbage";
  return tokenizer;
}

void save_checkpoint(const std::string& dir, const GptMoe& model, const AdamW& optimizer,
                     const TrainingProgress& progress, const TrainingGroups* groups, const Tokenizer* tokenizer) {
  const int64_t E = model.config().num_experts;
  const bool writer = groups == nullptr || groups->rank() == 0;
  const std::string iteration = std::to_string(progress.iteration);

  std::vector<std::pair<std::string, Tensor>> weights, moments;
  const auto state = optimizer.state_tensors();  // two per parameter, in parameter order
  size_t i = 0;
  for (const Parameter& p : model.params().all()) {
    weights.emplace_back(p.name, gathered(p, p.value, groups, E));
    moments.emplace_back(state[2 * i].first, gathered(p, state[2 * i].second, groups, E));
    moments.emplace_back(state[2 * i + 1].first, gathered(p, state[2 * i + 1].second, groups, E));
    ++i;
  }
  if (writer) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    AMPIPE_CHECK(!ec) << "cannot create checkpoint directory '" << dir << "': " << ec.message();
    AMPIPE_CHECK(!is_hf_checkpoint(dir))
        << "'" << dir << "' holds a Hugging Face checkpoint, whose "
        << "model.safetensors this save would replace; save to another directory";
    std::map<std::string, std::string> opt_meta = {
        {"iteration", iteration},
        {"optimizer_steps", std::to_string(optimizer.steps_taken())},
        {"seed", std::to_string(progress.seed)},
        {"format", "ampipe-optimizer-v1"}};
    write_safetensors(optimizer_path(dir), moments, opt_meta);
    if (tokenizer != nullptr && !tokenizer->serialized_model().empty())
      write_file_atomically(checkpoint_tokenizer_path(dir), tokenizer->serialized_model());
    std::map<std::string, std::string> meta = model.config().to_metadata();
    meta["iteration"] = iteration;
    write_safetensors(model_path(dir), weights, meta);
  }
  if (groups != nullptr) groups->world->barrier();  // the files exist for every rank from here on
}

ModelConfig read_checkpoint_config(const std::string& dir) {
  if (is_hf_checkpoint(dir)) return read_hf_config(dir);
  const std::string path = model_path(dir);
  AMPIPE_CHECK(fs::exists(path)) << "no checkpoint at '" << dir << "' (missing " << path << ")";
  SafetensorsFile file = read_safetensors(path);
  return ModelConfig::from_metadata(file.metadata);
}

void load_model_weights(const std::string& dir, GptMoe& model) {
  if (is_hf_checkpoint(dir)) return load_hf_weights(dir, model);
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
    const Shape expected = whole_shape(p, stored.num_experts);
    AMPIPE_CHECK(it->second.dtype() == DType::F32 && it->second.shape() == expected)
        << "checkpoint tensor '" << p.name << "' is " << dtype_name(it->second.dtype()) << " "
        << shape_string(it->second.shape()) << ", the model needs float32 " << shape_string(expected);
    p.value.copy_from(local_slice(p, it->second));
    unused.erase(p.name);
  }
  AMPIPE_CHECK(unused.empty()) << "checkpoint " << path << " has unexpected tensor '" << *unused.begin()
                               << "'";
}

bool has_training_state(const std::string& dir) { return !is_hf_checkpoint(dir); }

TrainingProgress load_training_state(const std::string& dir, const GptMoe& model, AdamW& optimizer) {
  AMPIPE_CHECK(has_training_state(dir))
      << "checkpoint '" << dir << "' is a Hugging Face directory: it holds weights but no training state";
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
  AMPIPE_CHECK(model_iter == opt_iter)
      << "checkpoint '" << dir << "' is inconsistent: model at iteration " << model_iter << ", optimizer at "
      << opt_iter << " (interrupted save?)";
  TrainingProgress progress;
  try {
    progress.iteration = std::stoll(opt_iter);
    progress.seed = std::stoull(get(file, path, "seed"));
    const int64_t steps = std::stoll(get(file, path, "optimizer_steps"));
    std::vector<std::pair<std::string, Tensor>> tensors;
    for (const Parameter& p : model.params().all()) {
      for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
        auto it = file.tensors.find(p.name + suffix);
        AMPIPE_CHECK(it != file.tensors.end()) << path << " lacks '" << p.name << suffix << "'";
        const Shape expected = whole_shape(p, model.config().num_experts);
        AMPIPE_CHECK(it->second.shape() == expected)
            << path << ": '" << p.name << suffix << "' has shape " << shape_string(it->second.shape())
            << ", expected " << shape_string(expected);
        tensors.emplace_back(p.name + suffix, local_slice(p, it->second));
      }
    }
    optimizer.load_state(tensors, steps);
  } catch (const std::invalid_argument&) {
    AMPIPE_CHECK(false) << path << " has malformed metadata";
  } catch (const std::out_of_range&) {
    AMPIPE_CHECK(false) << path << " has malformed metadata";
  }
  return progress;
}

}  // namespace ampipe

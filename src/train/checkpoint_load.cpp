// Reading checkpoints (train/checkpoint.h): the gathered format, the sharded one
// (train/sharded_checkpoint.h) and a Hugging Face directory's weights.
#include <cmath>
#include <filesystem>
#include <set>

#include "train/checkpoint.h"
#include "train/checkpoint_internal.h"
#include "train/hf_checkpoint.h"
#include "train/safetensors.h"
#include "train/sharded_checkpoint.h"

namespace ampipe {

namespace fs = std::filesystem;
using checkpoint_detail::files_dir;
using checkpoint_detail::global_offset;
using checkpoint_detail::local_part;
using checkpoint_detail::model_path;
using checkpoint_detail::optimizer_path;
using checkpoint_detail::whole_shape;

// Reads this rank's part of the whole tensor `name` of a sharded checkpoint into `out` (p's
// shape): its expert slice, or (tensor parallelism) the whole tensor read and its shard taken.
static void read_local(const ShardedCheckpoint& ckpt, const std::string& name, const Parameter& p,
                       const std::vector<TensorParallelShard>& shards, Tensor out) {
  if (const TensorParallelShard* shard =
          p.tensor_parallel ? checkpoint_detail::find_shard(shards, p.name) : nullptr) {
    const int64_t n = shape_numel(shard->full_shape);
    Tensor whole = Tensor::empty({n});
    ckpt.read(name, 0, whole);
    out.copy_from(take_tensor_parallel_shard(whole.reshape(shard->full_shape), *shard).reshape(out.shape()));
    return;
  }
  ckpt.read(name, global_offset(p), out);
}

// The model's config against a checkpoint's (refused when they differ), then every parameter's
// local part read from its shards.
static void load_sharded_weights(const ShardedCheckpoint& ckpt, GptMoe& model) {
  const ModelConfig stored = ModelConfig::from_metadata(ckpt.model_metadata());
  const std::string diff = stored.differences(model.config());
  AMPIPE_CHECK(diff.empty()) << "checkpoint '" << ckpt.dir() << "' was saved with a different model config ("
                             << "checkpoint vs flags: " << diff << ")";
  std::set<std::string> unused;
  for (const std::string& name : ckpt.tensor_names())
    if (!name.ends_with(".exp_avg") && !name.ends_with(".exp_avg_sq")) unused.insert(name);
  const std::vector<TensorParallelShard> shards = model.all_parallel_shards();
  for (Parameter& p : model.params().all()) {
    const Shape expected = whole_shape(p, stored.num_experts, shards);
    AMPIPE_CHECK(ckpt.shape(p.name) == expected)
        << "checkpoint tensor '" << p.name << "' is " << shape_string(ckpt.shape(p.name))
        << ", the model needs " << shape_string(expected);
    Tensor host = Tensor::empty({p.value.numel()});
    read_local(ckpt, p.name, p, shards, host);
    p.value.copy_from(host.reshape(p.value.shape()));
    unused.erase(p.name);
  }
  AMPIPE_CHECK(unused.empty()) << "checkpoint " << ckpt.dir() << " has unexpected tensor '" << *unused.begin()
                               << "'";
}

static std::string metadata_value(const std::map<std::string, std::string>& meta, const std::string& path,
                                  const char* key) {
  const auto it = meta.find(key);
  AMPIPE_CHECK(it != meta.end()) << path << " lacks metadata '" << key << "'";
  return it->second;
}

static TrainingProgress load_sharded_training_state(const ShardedCheckpoint& ckpt, const GptMoe& model,
                                                    AdamW& optimizer) {
  const std::string path = sharded_index_path(ckpt.dir());
  const auto& meta = ckpt.optimizer_metadata();
  TrainingProgress progress;
  try {
    progress.iteration = std::stoll(metadata_value(meta, path, "iteration"));
    progress.seed = std::stoull(metadata_value(meta, path, "seed"));
    const int64_t steps = std::stoll(metadata_value(meta, path, "optimizer_steps"));
    const auto& params = model.params().all();
    const std::vector<TensorParallelShard> shards = model.all_parallel_shards();
    for (const Parameter& p : params)
      for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
        const Shape expected = whole_shape(p, model.config().num_experts, shards);
        AMPIPE_CHECK(ckpt.shape(p.name + suffix) == expected)
            << path << ": '" << p.name << suffix << "' has shape "
            << shape_string(ckpt.shape(p.name + suffix)) << ", expected " << shape_string(expected);
      }
    // Names are "<param>.exp_avg(_sq)": the parameter's own offset in the whole tensor applies.
    std::map<std::string, const Parameter*> owner;
    for (const Parameter& p : params) {
      owner[p.name + ".exp_avg"] = &p;
      owner[p.name + ".exp_avg_sq"] = &p;
    }
    optimizer.load_state(
        [&](const std::string& name, int64_t begin, Tensor out) {
          const Parameter& p = *owner.at(name);
          if (!p.tensor_parallel) return ckpt.read(name, global_offset(p) + begin, out);
          // A shard's moments (the optimizer is not sharded under tensor parallelism): the whole
          // local tensor, then the range asked for.
          Tensor local = Tensor::empty(p.value.shape());
          read_local(ckpt, name, p, shards, local);
          out.copy_from(local.reshape({local.numel()}).rows(begin, begin + out.numel()));
        },
        steps);
  } catch (const std::invalid_argument&) {
    AMPIPE_CHECK(false) << path << " has malformed metadata";
  } catch (const std::out_of_range&) {
    AMPIPE_CHECK(false) << path << " has malformed metadata";
  }
  return progress;
}

ModelConfig read_checkpoint_config(const std::string& root) {
  const std::string dir = files_dir(root);
  if (is_hf_checkpoint(dir)) return read_hf_config(dir);
  if (is_sharded_checkpoint(dir)) return ModelConfig::from_metadata(ShardedCheckpoint(dir).model_metadata());
  const std::string path = model_path(dir);
  AMPIPE_CHECK(fs::exists(path)) << "no checkpoint at '" << dir << "' (missing " << path << ")";
  return ModelConfig::from_metadata(read_safetensors_header(path).metadata);
}

void load_model_weights(const std::string& root, GptMoe& model) {
  const std::string dir = files_dir(root);
  if (is_hf_checkpoint(dir)) return load_hf_weights(dir, model);
  if (is_sharded_checkpoint(dir)) return load_sharded_weights(ShardedCheckpoint(dir), model);
  const std::string path = model_path(dir);
  AMPIPE_CHECK(fs::exists(path)) << "no checkpoint at '" << dir << "' (missing " << path << ")";
  SafetensorsFile file = read_safetensors(path);
  ModelConfig stored = ModelConfig::from_metadata(file.metadata);
  const std::string diff = stored.differences(model.config());
  AMPIPE_CHECK(diff.empty()) << "checkpoint '" << dir << "' was saved with a different model config ("
                             << "checkpoint vs flags: " << diff << ")";
  std::set<std::string> unused;
  for (const auto& [name, t] : file.tensors) unused.insert(name);
  const std::vector<TensorParallelShard> shards = model.all_parallel_shards();
  for (Parameter& p : model.params().all()) {
    auto it = file.tensors.find(p.name);
    AMPIPE_CHECK(it != file.tensors.end()) << "checkpoint " << path << " lacks tensor '" << p.name << "'";
    const Shape expected = whole_shape(p, stored.num_experts, shards);
    AMPIPE_CHECK(it->second.dtype() == DType::F32 && it->second.shape() == expected)
        << "checkpoint tensor '" << p.name << "' is " << dtype_name(it->second.dtype()) << " "
        << shape_string(it->second.shape()) << ", the model needs float32 " << shape_string(expected);
    p.value.copy_from(local_part(p, it->second, shards));
    unused.erase(p.name);
  }
  AMPIPE_CHECK(unused.empty()) << "checkpoint " << path << " has unexpected tensor '" << *unused.begin()
                               << "'";
}

bool has_training_state(const std::string& dir) { return !is_hf_checkpoint(files_dir(dir)); }

int64_t checkpoint_iteration(const std::string& root) {
  const std::string dir = files_dir(root);
  if (is_sharded_checkpoint(dir)) return ShardedCheckpoint(dir).iteration();
  if (!has_training_state(dir) || !fs::exists(optimizer_path(dir))) return -1;
  const std::map<std::string, std::string> meta = read_safetensors_header(optimizer_path(dir)).metadata;
  const auto it = meta.find("iteration");
  AMPIPE_CHECK(it != meta.end() && !it->second.empty() && it->second.size() <= 18 &&
               it->second.find_first_not_of("0123456789") == std::string::npos)
      << optimizer_path(dir) << " has no iteration stamp";
  return std::stoll(it->second);
}

// The schedule settings among a checkpoint's optimizer metadata (`path` names it in messages).
static std::optional<ScheduleSettings> schedule_from_metadata(const std::map<std::string, std::string>& meta,
                                                              const std::string& path) {
  if (meta.find("train_iters") == meta.end()) return std::nullopt;  // written before they were recorded
  auto get = [&](const char* key) -> const std::string& {
    auto it = meta.find(key);
    AMPIPE_CHECK(it != meta.end()) << path << " lacks metadata '" << key << "'";
    return it->second;
  };
  auto real = [&](const char* key) {
    size_t used = 0;
    double v = 0;
    try {
      v = std::stod(get(key), &used);
    } catch (const std::exception&) {
      used = 0;
    }
    AMPIPE_CHECK(used > 0 && used == get(key).size() && std::isfinite(v))
        << path << ": metadata '" << key << "' is not a number ('" << get(key) << "')";
    return v;
  };
  auto integer = [&](const char* key) {
    const double v = real(key);
    AMPIPE_CHECK(v == std::floor(v) && v >= 0 && v < 9e15)
        << path << ": metadata '" << key << "' is not a count";
    return static_cast<int64_t>(v);
  };
  ScheduleSettings s;
  s.lr.lr = real("lr");
  s.lr.min_lr = real("min_lr");
  s.lr.warmup_iters = integer("lr_warmup_iters");
  s.lr.decay_iters = integer("lr_decay_iters");
  s.adamw.weight_decay = real("weight_decay");
  s.adamw.beta1 = real("adam_beta1");
  s.adamw.beta2 = real("adam_beta2");
  s.adamw.eps = real("adam_eps");
  s.adamw.clip_grad = real("clip_grad");
  s.train_iters = integer("train_iters");
  s.global_batch = integer("global_batch_size");
  return s;
}

std::optional<ScheduleSettings> read_schedule_settings(const std::string& root) {
  const std::string dir = files_dir(root);
  if (is_sharded_checkpoint(dir))
    return schedule_from_metadata(ShardedCheckpoint(dir).optimizer_metadata(), sharded_index_path(dir));
  if (!has_training_state(dir) || !fs::exists(optimizer_path(dir))) return std::nullopt;
  const std::string path = optimizer_path(dir);
  return schedule_from_metadata(read_safetensors_header(path).metadata, path);
}

TrainingProgress load_training_state(const std::string& root, const GptMoe& model, AdamW& optimizer) {
  const std::string dir = files_dir(root);
  AMPIPE_CHECK(has_training_state(dir))
      << "checkpoint '" << dir << "' is a Hugging Face directory: it holds weights but no training state";
  if (is_sharded_checkpoint(dir))
    return load_sharded_training_state(ShardedCheckpoint(dir), model, optimizer);
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
    const std::vector<TensorParallelShard> shards = model.all_parallel_shards();
    for (const Parameter& p : model.params().all()) {
      for (const char* suffix : {".exp_avg", ".exp_avg_sq"}) {
        auto it = file.tensors.find(p.name + suffix);
        AMPIPE_CHECK(it != file.tensors.end()) << path << " lacks '" << p.name << suffix << "'";
        const Shape expected = whole_shape(p, model.config().num_experts, shards);
        AMPIPE_CHECK(it->second.shape() == expected)
            << path << ": '" << p.name << suffix << "' has shape " << shape_string(it->second.shape())
            << ", expected " << shape_string(expected);
        tensors.emplace_back(p.name + suffix, local_part(p, it->second, shards));
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

#include "train/checkpoint.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <cmath>
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

static std::string files_dir(const std::string& dir);

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

std::unique_ptr<Tokenizer> checkpoint_tokenizer(const std::string& root, const ModelConfig& config,
                                                const std::string& override_model) {
  const std::string dir = files_dir(root);
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

// The gathered tensors of a save (collective), on the host, written by `writer` only.
struct GatheredState {
  std::vector<std::pair<std::string, Tensor>> weights, moments;
};

static GatheredState gather_state(const GptMoe& model, const AdamW& optimizer, const TrainingGroups* groups) {
  const int64_t E = model.config().num_experts;
  GatheredState g;
  const auto state = optimizer.state_tensors();  // two per parameter, in parameter order
  size_t i = 0;
  // A model on the GPU saves the same float32 file: every tensor is copied to the host first.
  for (const Parameter& p : model.params().all()) {
    g.weights.emplace_back(p.name, gathered(p, p.value.to(Device::CPU), groups, E));
    g.moments.emplace_back(state[2 * i].first, gathered(p, state[2 * i].second.to(Device::CPU), groups, E));
    g.moments.emplace_back(state[2 * i + 1].first,
                           gathered(p, state[2 * i + 1].second.to(Device::CPU), groups, E));
    ++i;
  }
  return g;
}

// Doubles with 17 significant digits: a resumed run reads back the very value it trained with.
static std::string exact(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

static void add_schedule_metadata(const ScheduleSettings& s, std::map<std::string, std::string>& meta) {
  meta["lr"] = exact(s.lr.lr);
  meta["min_lr"] = exact(s.lr.min_lr);
  meta["lr_warmup_iters"] = std::to_string(s.lr.warmup_iters);
  meta["lr_decay_iters"] = std::to_string(s.lr.decay_iters);
  meta["lr_decay_style"] = "cosine";
  meta["weight_decay"] = exact(s.adamw.weight_decay);
  meta["adam_beta1"] = exact(s.adamw.beta1);
  meta["adam_beta2"] = exact(s.adamw.beta2);
  meta["adam_eps"] = exact(s.adamw.eps);
  meta["clip_grad"] = exact(s.adamw.clip_grad);
  meta["train_iters"] = std::to_string(s.train_iters);
  meta["global_batch_size"] = std::to_string(s.global_batch);
}

// Writes the checkpoint files into the existing directory `dir`: optimizer, tokenizer, model last.
static void write_checkpoint_files(const std::string& dir, const GatheredState& g, const GptMoe& model,
                                   const AdamW& optimizer, const TrainingProgress& progress,
                                   const Tokenizer* tokenizer) {
  const std::string iteration = std::to_string(progress.iteration);
  // Nothing is written from a non-finite state: the previous checkpoint stays the latest.
  for (const auto* part : {&g.weights, &g.moments})
    for (const auto& [name, t] : *part) {
      if (t.dtype() != DType::F32) continue;
      const Tensor c = t.is_contiguous() ? t : t.clone();
      const float* v = c.data<float>();
      for (int64_t i = 0; i < c.numel(); ++i)
        AMPIPE_CHECK(std::isfinite(v[i])) << "refusing to save iteration " << iteration << ": '" << name
                                          << "' holds a non-finite value (" << v[i] << ") at element " << i;
    }
  std::map<std::string, std::string> opt_meta = {{"iteration", iteration},
                                                 {"optimizer_steps", std::to_string(optimizer.steps_taken())},
                                                 {"seed", std::to_string(progress.seed)},
                                                 {"format", "ampipe-optimizer-v1"}};
  if (progress.schedule) add_schedule_metadata(*progress.schedule, opt_meta);
  write_safetensors(optimizer_path(dir), g.moments, opt_meta);
  if (tokenizer != nullptr && !tokenizer->serialized_model().empty())
    write_file_atomically(checkpoint_tokenizer_path(dir), tokenizer->serialized_model());
  std::map<std::string, std::string> meta = model.config().to_metadata();
  meta["iteration"] = iteration;
  write_safetensors(model_path(dir), g.weights, meta);
}

static bool is_writer(const TrainingGroups* groups) { return groups == nullptr || groups->rank() == 0; }

void save_checkpoint(const std::string& dir, const GptMoe& model, const AdamW& optimizer,
                     const TrainingProgress& progress, const TrainingGroups* groups, const Tokenizer* tokenizer) {
  const GatheredState g = gather_state(model, optimizer, groups);
  if (is_writer(groups)) {
    std::error_code ec;
    fs::create_directories(dir, ec);
    AMPIPE_CHECK(!ec) << "cannot create checkpoint directory '" << dir << "': " << ec.message();
    AMPIPE_CHECK(!is_hf_checkpoint(dir))
        << "'" << dir << "' holds a Hugging Face checkpoint, whose "
        << "model.safetensors this save would replace; save to another directory";
    write_checkpoint_files(dir, g, model, optimizer, progress, tokenizer);
  }
  if (groups != nullptr) groups->world->barrier();  // the files exist for every rank from here on
}

std::string iteration_dir_name(int64_t iteration) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "iter_%07lld", static_cast<long long>(iteration));
  return buf;
}

std::string tracker_path(const std::string& root) {
  return (fs::path(root) / "latest_checkpointed_iteration.txt").string();
}


// The iteration of a name "iter_NNNNNNN" (digits only), else -1.
static int64_t parse_iteration_name(const std::string& name) {
  if (name.size() <= 5 || name.compare(0, 5, "iter_") != 0) return -1;
  const std::string digits = name.substr(5);
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return -1;
  return std::stoll(digits);
}

// The iterations of ROOT's iteration directories, ascending.
static std::vector<int64_t> iteration_dirs(const std::string& root) {
  std::vector<int64_t> out;
  std::error_code ec;
  for (fs::directory_iterator it(root, ec), end; !ec && it != end; it.increment(ec)) {
    const int64_t n = parse_iteration_name(it->path().filename().string());
    if (n >= 0 && it->is_directory(ec)) out.push_back(n);
  }
  std::sort(out.begin(), out.end());
  return out;
}

static std::string iteration_path(const std::string& root, int64_t iteration) {
  return (fs::path(root) / iteration_dir_name(iteration)).string();
}

// The writer's part of save_iteration_checkpoint; throws on failure after removing its temporary.
static void write_iteration(const std::string& root, const GatheredState& g, const GptMoe& model,
                            const AdamW& optimizer, const TrainingProgress& progress, const Tokenizer* tokenizer,
                            int64_t keep) {
  std::error_code ec;
  fs::create_directories(root, ec);
  AMPIPE_CHECK(!ec) << "cannot create checkpoint directory '" << root << "': " << ec.message();
  AMPIPE_CHECK(!is_hf_checkpoint(root) && !fs::exists(model_path(root)))
      << "'" << root << "' holds a " << (is_hf_checkpoint(root) ? "Hugging Face" : "single-directory")
      << " checkpoint (model.safetensors at its top); save iteration checkpoints to another directory";
  const std::string name = iteration_dir_name(progress.iteration);
  const std::string final_dir = iteration_path(root, progress.iteration);
  const std::string tmp = final_dir + ".tmp";
  const std::string old = final_dir + ".old.tmp";
  // Leftovers of an interrupted save (never named by the tracker).
  for (const std::string& stale : {tmp, old})
    if (fs::is_directory(stale, ec)) fs::remove_all(stale, ec);
  const bool created = fs::create_directory(tmp, ec) && !ec;
  AMPIPE_CHECK(created) << "cannot create '" << tmp << "': " << (ec ? ec.message() : std::string("something is in the way"));
  try {
    write_checkpoint_files(tmp, g, model, optimizer, progress, tokenizer);  // each file fsynced
    fsync_directory(tmp);
    if (fs::exists(final_dir, ec)) {  // a re-save of this iteration (after --ckpt-step or a crash)
      fs::rename(final_dir, old, ec);
      AMPIPE_CHECK(!ec) << "cannot move the older '" << final_dir << "' aside: " << ec.message();
    }
    fs::rename(tmp, final_dir, ec);
    AMPIPE_CHECK(!ec) << "cannot rename '" << tmp << "' to '" << final_dir << "': " << ec.message();
    fsync_directory(root);
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  fs::remove_all(old, ec);
  write_file_atomically(tracker_path(root), std::to_string(progress.iteration));
  if (keep <= 0) return;
  // Keep the newest `keep` complete iteration directories at or below this one.
  std::vector<int64_t> its = iteration_dirs(root);
  std::reverse(its.begin(), its.end());
  int64_t kept = 0;
  for (int64_t n : its) {
    if (n > progress.iteration) continue;  // a later one from before a rollback: replaced when reached
    if (kept < keep && checkpoint_problem(iteration_path(root, n)).empty()) {
      ++kept;
      continue;
    }
    if (kept >= keep) fs::remove_all(iteration_path(root, n), ec);
  }
}

std::string SaveDirectoryLock::lock_path(const std::string& root) {
  return (fs::path(root) / ".ampipe-save.lock").string();
}

SaveDirectoryLock::SaveDirectoryLock(const std::string& root) {
  std::error_code ec;
  fs::create_directories(root, ec);
  AMPIPE_CHECK(!ec) << "cannot create --save directory '" << root << "': " << ec.message();
  const std::string path = lock_path(root);
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  AMPIPE_CHECK(fd_ >= 0) << "cannot open the lock file '" << path << "': " << std::strerror(errno);
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    std::string holder = read_file(path);
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == '\r')) holder.pop_back();
    ::close(fd_);
    fd_ = -1;
    AMPIPE_CHECK(err != EWOULDBLOCK)
        << "another job holds the --save directory '" << root << "' (" << (holder.empty() ? "holder unknown" : holder)
        << ", lock " << path << "): two jobs saving into one directory would overwrite each other's checkpoints; "
        << "give this job its own --save, or end the other";
    AMPIPE_CHECK(false) << "cannot lock '" << path << "': " << std::strerror(err);
  }
  char host[256] = {0};
  ::gethostname(host, sizeof(host) - 1);
  const std::string who = "host " + std::string(host) + ", pid " + std::to_string(::getpid()) + "\n";
  if (::ftruncate(fd_, 0) == 0) (void)write_all(fd_, who.data(), who.size());
}

SaveDirectoryLock::~SaveDirectoryLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

void save_iteration_checkpoint(const std::string& root, const GptMoe& model, const AdamW& optimizer,
                               const TrainingProgress& progress, const TrainingGroups* groups,
                               const Tokenizer* tokenizer, int64_t keep) {
  const GatheredState g = gather_state(model, optimizer, groups);
  std::string failure;
  if (is_writer(groups)) {
    try {
      write_iteration(root, g, model, optimizer, progress, tokenizer, keep);
    } catch (const std::exception& e) {
      failure = e.what();
      if (failure.empty()) failure = "unknown error";
    }
  }
  // Every rank learns the writer's outcome (and the files exist for every rank from here on).
  if (groups != nullptr && groups->world->size() > 1) groups->world->broadcast_bytes(failure, 0);
  AMPIPE_CHECK(failure.empty()) << "saving checkpoint " << iteration_dir_name(progress.iteration) << " to '"
                                << root << "' failed: " << failure
                                << " (the previous checkpoint is intact and still the latest)";
}

std::string checkpoint_problem(const std::string& dir) {
  std::map<std::string, std::string> model_meta, opt_meta;
  for (const char* name : {"model.safetensors", "optimizer.safetensors"}) {
    const std::string path = (fs::path(dir) / name).string();
    if (!fs::exists(path)) return std::string(name) + ": missing";
    try {
      (name[0] == 'm' ? model_meta : opt_meta) = read_safetensors_header(path).metadata;
    } catch (const std::exception& e) {
      return std::string(name) + ": " + e.what();
    }
  }
  const auto model_it = model_meta.find("iteration"), opt_it = opt_meta.find("iteration");
  if (model_it == model_meta.end()) return "model.safetensors: no iteration stamp";
  if (opt_it == opt_meta.end()) return "optimizer.safetensors: no iteration stamp";
  if (model_it->second != opt_it->second)
    return "model.safetensors is stamped iteration " + model_it->second + ", optimizer.safetensors " +
           opt_it->second;
  const int64_t named = parse_iteration_name(fs::path(dir).filename().string());
  if (named >= 0 && std::to_string(named) != model_it->second)
    return "its files are stamped iteration " + model_it->second;
  const auto tok = model_meta.find("tokenizer");
  if (tok != model_meta.end() && tok->second != "byte" && !fs::exists(checkpoint_tokenizer_path(dir)))
    return "tokenizer.model: missing";
  return "";
}

// The tracker's iteration; throws on a malformed tracker.
static int64_t read_tracker(const std::string& root) {
  const std::string text = read_file(tracker_path(root));
  size_t b = text.find_first_not_of(" \t\r\n"), e = text.find_last_not_of(" \t\r\n");
  const std::string digits = b == std::string::npos ? "" : text.substr(b, e - b + 1);
  AMPIPE_CHECK(!digits.empty() && digits.size() <= 18 &&
               std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; }))
      << tracker_path(root) << " does not hold an iteration number (it holds '" << digits << "')";
  return std::stoll(digits);
}

CheckpointLocation locate_checkpoint(const std::string& dir, int64_t step) {
  std::error_code ec;
  if (fs::is_regular_file(dir, ec)) {
    const std::string parent = fs::path(dir).parent_path().string();
    AMPIPE_CHECK(false) << "--load '" << dir << "' is a file; give the directory that holds the checkpoint ('"
                        << (parent.empty() ? "." : parent) << "')";
  }
  const bool has_tracker = fs::exists(tracker_path(dir), ec);
  if (step < 0 && !has_tracker && (fs::exists(model_path(dir), ec) || is_hf_checkpoint(dir))) return {dir, ""};
  if (step < 0 && !has_tracker) {
    if (!fs::exists(dir, ec)) return {"", "no checkpoint at '" + dir + "' (it does not exist): starting from scratch"};
    std::string notice = "no checkpoint in '" + dir + "' (no " + fs::path(tracker_path(dir)).filename().string() +
                         " and no model.safetensors): starting from scratch";
    if (!iteration_dirs(dir).empty())
      notice += " (its iteration directories were never marked complete; --ckpt-step N loads one)";
    return {"", notice};
  }
  const int64_t n = step >= 0 ? step : read_tracker(dir);
  const std::string path = iteration_path(dir, n);
  std::string problem = fs::is_directory(path, ec) ? checkpoint_problem(path) : "the directory does not exist";
  if (problem.empty()) return {path, ""};
  std::string previous;
  const std::vector<int64_t> its = iteration_dirs(dir);
  for (auto it = its.rbegin(); it != its.rend(); ++it) {
    if (*it >= n || !checkpoint_problem(iteration_path(dir, *it)).empty()) continue;
    previous = "; the previous complete checkpoint is " + iteration_dir_name(*it) + ": resume with --ckpt-step " +
               std::to_string(*it);
    break;
  }
  if (previous.empty()) previous = "; there is no earlier complete checkpoint in '" + dir + "'";
  AMPIPE_CHECK(false) << "checkpoint " << path << " is incomplete (" << problem << ")" << previous;
  return {};
}

std::string checkpoint_to_read(const std::string& dir, int64_t step) {
  CheckpointLocation loc = locate_checkpoint(dir, step);
  std::string why = loc.notice;  // "no checkpoint ... (why): starting from scratch" -> without the last part
  const std::string fresh = ": starting from scratch";
  if (const size_t cut = why.find(fresh); cut != std::string::npos) why.erase(cut, fresh.size());
  AMPIPE_CHECK(!loc.path.empty()) << why;
  return loc.path;
}

// An iteration root's latest checkpoint directory (its tracker's iteration, unverified), else `dir`.
static std::string files_dir(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(model_path(dir), ec) || !fs::exists(tracker_path(dir), ec)) return dir;
  return iteration_path(dir, read_tracker(dir));
}

ModelConfig read_checkpoint_config(const std::string& root) {
  const std::string dir = files_dir(root);
  if (is_hf_checkpoint(dir)) return read_hf_config(dir);
  const std::string path = model_path(dir);
  AMPIPE_CHECK(fs::exists(path)) << "no checkpoint at '" << dir << "' (missing " << path << ")";
  SafetensorsFile file = read_safetensors(path);
  return ModelConfig::from_metadata(file.metadata);
}

void load_model_weights(const std::string& root, GptMoe& model) {
  const std::string dir = files_dir(root);
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

bool has_training_state(const std::string& dir) { return !is_hf_checkpoint(files_dir(dir)); }

int64_t checkpoint_iteration(const std::string& root) {
  const std::string dir = files_dir(root);
  if (!has_training_state(dir) || !fs::exists(optimizer_path(dir))) return -1;
  const std::map<std::string, std::string> meta = read_safetensors_header(optimizer_path(dir)).metadata;
  const auto it = meta.find("iteration");
  AMPIPE_CHECK(it != meta.end() && !it->second.empty() && it->second.size() <= 18 &&
               it->second.find_first_not_of("0123456789") == std::string::npos)
      << optimizer_path(dir) << " has no iteration stamp";
  return std::stoll(it->second);
}

std::optional<ScheduleSettings> read_schedule_settings(const std::string& root) {
  const std::string dir = files_dir(root);
  if (!has_training_state(dir) || !fs::exists(optimizer_path(dir))) return std::nullopt;
  const std::string path = optimizer_path(dir);
  const std::map<std::string, std::string> meta = read_safetensors_header(path).metadata;
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

TrainingProgress load_training_state(const std::string& root, const GptMoe& model, AdamW& optimizer) {
  const std::string dir = files_dir(root);
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

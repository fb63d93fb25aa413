#include "train/checkpoint.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <functional>
#include <set>

#include "core/atomic_file.h"
#include "train/checkpoint_internal.h"
#include "train/hf_checkpoint.h"
#include "train/safetensors.h"
#include "train/sharded_checkpoint.h"

namespace ampipe {

namespace fs = std::filesystem;

using checkpoint_detail::files_dir;
using checkpoint_detail::model_path;
using checkpoint_detail::optimizer_path;
using checkpoint_detail::whole_shape;

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

// Tensor parallelism: the full (T = 1) tensor of a sharded parameter, every rank's shard gathered
// over the tensor group and placed where its rank's pieces say (`shards`[r]: rank r's); else `t`.
static Tensor tensor_parallel_whole(const Parameter& p, const Tensor& t, Communicator* tensor_group,
                                    const std::vector<std::vector<TensorParallelShard>>& shards) {
  if (!p.tensor_parallel || tensor_group == nullptr) return t;
  const int T = tensor_group->size();
  const int64_t n = t.numel();
  Tensor parts = Tensor::empty({T * n});
  tensor_group->all_gather((t.is_contiguous() ? t : t.clone()).reshape({n}), parts);
  Tensor whole;
  for (int r = 0; r < T; ++r) {
    const TensorParallelShard* shard = checkpoint_detail::find_shard(shards[r], p.name);
    AMPIPE_CHECK(shard != nullptr) << "tensor-parallel parameter '" << p.name << "' has no shard on rank "
                                   << r;
    if (!whole.defined()) whole = Tensor::empty(shard->full_shape);
    place_tensor_parallel_shard(parts.rows(r * n, (r + 1) * n).reshape(t.shape()), *shard, whole);
  }
  return whole;
}

static GatheredState gather_state(const GptMoe& model, const AdamW& optimizer, const TrainingGroups* groups) {
  const int64_t E = model.config().num_experts;
  GatheredState g;
  const auto state = optimizer.state_tensors();  // two per parameter, in parameter order
  // Every rank's shards, under tensor parallelism (attention, embedding, head) and expert tensor
  // parallelism (the experts' FFN width).
  Communicator* tensor_group = model.tensor_group();
  Communicator* expert_tensor_group = model.expert_tensor_group();
  std::vector<std::vector<TensorParallelShard>> shards, expert_shards;
  for (int r = 0; tensor_group != nullptr && r < tensor_group->size(); ++r)
    shards.push_back(model.tensor_parallel_shards(r));
  for (int r = 0; expert_tensor_group != nullptr && r < expert_tensor_group->size(); ++r)
    expert_shards.push_back(model.expert_tensor_parallel_shards(r));
  // An expert tensor's local experts at full width first (over the ETP group), then every expert
  // (over the EP group).
  auto whole = [&](const Parameter& p, const Tensor& local) {
    const Tensor host = local.to(Device::CPU);
    if (p.is_expert)
      return gathered(p, tensor_parallel_whole(p, host, expert_tensor_group, expert_shards), groups, E);
    return tensor_parallel_whole(p, host, tensor_group, shards);
  };
  size_t i = 0;
  // A model on the GPU saves the same float32 file: every tensor is copied to the host first.
  for (const Parameter& p : model.params().all()) {
    g.weights.emplace_back(p.name, whole(p, p.value));
    g.moments.emplace_back(state[2 * i].first, whole(p, state[2 * i].second));
    g.moments.emplace_back(state[2 * i + 1].first, whole(p, state[2 * i + 1].second));
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

// The optimizer file's metadata (the sharded index holds the same).
static std::map<std::string, std::string> optimizer_metadata(const AdamW& optimizer,
                                                             const TrainingProgress& progress) {
  std::map<std::string, std::string> meta = {{"iteration", std::to_string(progress.iteration)},
                                             {"optimizer_steps", std::to_string(optimizer.steps_taken())},
                                             {"seed", std::to_string(progress.seed)},
                                             {"format", "ampipe-optimizer-v1"}};
  if (progress.schedule) add_schedule_metadata(*progress.schedule, meta);
  return meta;
}

// Refuses to save a tensor holding a non-finite value: the previous checkpoint stays the latest.
static void check_finite(const std::string& name, const Tensor& t, int64_t iteration) {
  if (t.dtype() != DType::F32) return;
  const Tensor c = t.is_contiguous() ? t : t.clone();
  const float* v = c.data<float>();
  for (int64_t i = 0; i < c.numel(); ++i)
    AMPIPE_CHECK(std::isfinite(v[i])) << "refusing to save iteration " << iteration << ": '" << name
                                      << "' holds a non-finite value (" << v[i] << ") at element " << i;
}

// Writes the checkpoint files into the existing directory `dir`: optimizer, tokenizer, model last.
static void write_checkpoint_files(const std::string& dir, const GatheredState& g, const GptMoe& model,
                                   const AdamW& optimizer, const TrainingProgress& progress,
                                   const Tokenizer* tokenizer) {
  const std::string iteration = std::to_string(progress.iteration);
  // Nothing is written from a non-finite state: the previous checkpoint stays the latest.
  for (const auto* part : {&g.weights, &g.moments})
    for (const auto& [name, t] : *part) check_finite(name, t, progress.iteration);
  write_safetensors(optimizer_path(dir), g.moments, optimizer_metadata(optimizer, progress));
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

// Rank 0's first part of an iteration save: ROOT checked and created, the temporary directory
// ROOT/iter_N.tmp made afresh (leftovers of an interrupted save removed). Returns it.
static std::string prepare_iteration(const std::string& root, int64_t iteration) {
  std::error_code ec;
  fs::create_directories(root, ec);
  AMPIPE_CHECK(!ec) << "cannot create checkpoint directory '" << root << "': " << ec.message();
  AMPIPE_CHECK(!is_hf_checkpoint(root) && !fs::exists(model_path(root)) && !is_sharded_checkpoint(root))
      << "'" << root << "' holds a " << (is_hf_checkpoint(root) ? "Hugging Face" : "single-directory")
      << " checkpoint (model files at its top); save iteration checkpoints to another directory";
  const std::string final_dir = iteration_path(root, iteration);
  const std::string tmp = final_dir + ".tmp";
  // Leftovers of an interrupted save (never named by the tracker).
  for (const std::string& stale : {tmp, final_dir + ".old.tmp"})
    if (fs::is_directory(stale, ec)) fs::remove_all(stale, ec);
  const bool created = fs::create_directory(tmp, ec) && !ec;
  AMPIPE_CHECK(created) << "cannot create '" << tmp << "': " << (ec ? ec.message() : std::string("something is in the way"));
  return tmp;
}

// Rank 0's last part, once every file of the temporary directory is written and fsynced: the
// directory renamed into place, then the tracker, then the old iterations beyond `keep` deleted.
// Throws on failure after removing the temporary directory.
static void commit_iteration(const std::string& root, int64_t iteration, const std::string& tmp,
                             int64_t keep) {
  std::error_code ec;
  const std::string final_dir = iteration_path(root, iteration);
  const std::string old = final_dir + ".old.tmp";
  try {
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
  write_file_atomically(tracker_path(root), std::to_string(iteration));
  if (keep <= 0) return;
  // Keep the newest `keep` complete iteration directories at or below this one.
  std::vector<int64_t> its = iteration_dirs(root);
  std::reverse(its.begin(), its.end());
  int64_t kept = 0;
  for (int64_t n : its) {
    if (n > iteration) continue;  // a later one from before a rollback: replaced when reached
    if (kept < keep && checkpoint_problem(iteration_path(root, n)).empty()) {
      ++kept;
      continue;
    }
    if (kept >= keep) fs::remove_all(iteration_path(root, n), ec);
  }
}

// The writer's part of a gathered save; throws on failure after removing its temporary.
static void write_iteration(const std::string& root, const GatheredState& g, const GptMoe& model,
                            const AdamW& optimizer, const TrainingProgress& progress,
                            const Tokenizer* tokenizer, int64_t keep) {
  const std::string tmp = prepare_iteration(root, progress.iteration);
  try {
    write_checkpoint_files(tmp, g, model, optimizer, progress, tokenizer);  // each file fsynced
  } catch (...) {
    std::error_code ignored;
    fs::remove_all(tmp, ignored);
    throw;
  }
  commit_iteration(root, progress.iteration, tmp, keep);
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

// Every rank's failure message ("" for none) to every rank: the first rank's that failed, named.
static std::string first_failure(Communicator* world, const std::string& mine) {
  if (world == nullptr || world->size() <= 1) return mine;
  int64_t any = mine.empty() ? 0 : 1;
  world->all_reduce_max(any);
  if (any == 0) return "";
  std::string first;
  for (int r = 0; r < world->size(); ++r) {
    std::string message = world->rank() == r ? mine : std::string();
    world->broadcast_bytes(message, r);
    if (first.empty() && !message.empty()) first = "rank " + std::to_string(r) + ": " + message;
  }
  return first;
}

// A run of a tensor-parallel shard's flattened elements that is contiguous in the full tensor:
// local elements [local, local + size) are the full (flattened) tensor's [full, full + size).
struct ShardRun {
  int64_t local = 0, full = 0, size = 0;
};

// Splits the shard's local elements [begin, begin + count) into such runs (model/tensor_parallel.h:
// along `dim` the shard's pieces sit at their full_begin, every other dim whole).
static std::vector<ShardRun> shard_runs(const TensorParallelShard& s, int64_t begin, int64_t count) {
  int64_t inner = 1, local_dim = 0;
  for (size_t i = static_cast<size_t>(s.dim) + 1; i < s.full_shape.size(); ++i) inner *= s.full_shape[i];
  for (const TensorParallelShard::Piece& p : s.pieces) local_dim += p.size;
  const int64_t full_dim = s.full_shape[static_cast<size_t>(s.dim)];
  std::vector<ShardRun> runs;
  for (int64_t i = begin, end = begin + count; i < end;) {
    const int64_t outer = i / (local_dim * inner), rem = i % (local_dim * inner);
    const int64_t k = rem / inner, in = rem % inner;
    const TensorParallelShard::Piece* piece = nullptr;
    for (const TensorParallelShard::Piece& p : s.pieces)
      if (k >= p.local_begin && k < p.local_begin + p.size) piece = &p;
    AMPIPE_CHECK(piece != nullptr) << "shard of " << s.name << ": element " << i << " lies in no piece";
    const int64_t size = std::min(end - i, (piece->local_begin + piece->size - k) * inner - in);
    runs.push_back({i, (outer * full_dim + piece->full_begin + (k - piece->local_begin)) * inner + in, size});
    i += size;
  }
  return runs;
}

// This rank's pieces of a sharded save: the elements it owns (AdamW::owned_ranges) of every
// parameter and of both its moments, named "<tensor>@<begin in the whole tensor>". Under tensor
// parallelism a shard's owned elements are written at their places in the whole tensor (one piece
// per contiguous run), and a whole parameter, of which every rank of the (expert) tensor group holds
// a copy, only by that group's first rank: each element of the whole model once.
static std::vector<std::pair<std::string, Tensor>> owned_pieces(const GptMoe& model, const AdamW& optimizer,
                                                                int64_t iteration) {
  std::vector<std::pair<std::string, Tensor>> pieces;
  const auto& params = model.params().all();
  const std::vector<TensorParallelShard> shards = model.all_parallel_shards();
  const bool first_of_tensor = model.tensor_group() == nullptr || model.tensor_group()->rank() == 0;
  const bool first_of_expert_tensor =
      model.expert_tensor_group() == nullptr || model.expert_tensor_group()->rank() == 0;
  for (const MomentRange& r : optimizer.owned_ranges()) {
    const Parameter& p = params[r.param_index];
    const TensorParallelShard* shard =
        p.tensor_parallel ? checkpoint_detail::find_shard(shards, p.name) : nullptr;
    if (shard == nullptr && !(p.is_expert ? first_of_expert_tensor : first_of_tensor)) continue;  // a copy
    std::vector<ShardRun> runs{{r.begin, checkpoint_detail::global_offset(p) + r.begin, r.numel}};
    if (shard != nullptr) {
      runs = shard_runs(*shard, r.begin, r.numel);
      // An expert shard's full tensor is this rank's experts at full width: offset by the experts before.
      const int64_t before =
          p.is_expert ? p.expert_offset * (shape_numel(shard->full_shape) / shard->full_shape[0]) : 0;
      for (ShardRun& run : runs) run.full += before;
    }
    const Tensor value = p.value.reshape({p.value.numel()});
    for (const ShardRun& run : runs) {
      std::string at = "@";  // (appended: GCC 12's -Wrestrict misfires on "@" + std::string here)
      at += std::to_string(run.full);
      const int64_t from = run.local - r.begin;  // within the owned range (the moments' views)
      for (const auto& [name, t] :
           {std::pair{p.name, value.rows(run.local, run.local + run.size)},
            std::pair{p.name + ".exp_avg", r.exp_avg.rows(from, from + run.size)},
            std::pair{p.name + ".exp_avg_sq", r.exp_avg_sq.rows(from, from + run.size)}}) {
        Tensor host = t.to(Device::CPU);
        check_finite(name, host, iteration);
        pieces.emplace_back(name + at, host);
      }
    }
  }
  return pieces;
}

// The sharded save (train/sharded_checkpoint.h): rank 0 prepares the temporary directory, every
// rank writes its shard, rank 0 writes the index and commits. Collective; every rank learns any
// rank's failure, and a failed save leaves no temporary directory and the tracker untouched.
static void save_sharded_iteration(const std::string& root, const GptMoe& model, const AdamW& optimizer,
                                   const TrainingProgress& progress, const TrainingGroups* groups,
                                   const Tokenizer* tokenizer, int64_t keep) {
  Communicator* world = groups != nullptr ? groups->world : nullptr;
  const int rank = world != nullptr ? world->rank() : 0, R = world != nullptr ? world->size() : 1;
  const std::string tmp = iteration_path(root, progress.iteration) + ".tmp";
  auto attempt = [](const std::function<void()>& step) -> std::string {
    try {
      step();
    } catch (const std::exception& e) {
      return std::string(e.what()).empty() ? "unknown error" : e.what();
    }
    return "";
  };
  std::string failure = rank == 0 ? attempt([&] { prepare_iteration(root, progress.iteration); }) : "";
  failure = first_failure(world, failure);
  if (failure.empty()) {
    failure = attempt([&] {
      write_rank_shard(tmp, rank, R, progress.iteration, owned_pieces(model, optimizer, progress.iteration));
    });
    failure = first_failure(world, failure);
    if (rank == 0) {
      if (failure.empty())
        failure = attempt([&] {
          if (tokenizer != nullptr && !tokenizer->serialized_model().empty())
            write_file_atomically(checkpoint_tokenizer_path(tmp), tokenizer->serialized_model());
          std::map<std::string, Shape> shapes;
          for (const Parameter& p : model.params().all())
            for (const char* suffix : {"", ".exp_avg", ".exp_avg_sq"})
              shapes[p.name + suffix] =
                  whole_shape(p, model.config().num_experts, model.all_parallel_shards());
          std::map<std::string, std::string> meta = model.config().to_metadata();
          meta["iteration"] = std::to_string(progress.iteration);
          write_sharded_index(tmp, R, progress.iteration, shapes, meta,
                              optimizer_metadata(optimizer, progress));
          commit_iteration(root, progress.iteration, tmp, keep);
        });
      std::error_code ignored;
      if (!failure.empty()) fs::remove_all(tmp, ignored);
    }
    if (world != nullptr && R > 1) world->broadcast_bytes(failure, 0);
  }
  AMPIPE_CHECK(failure.empty()) << "saving checkpoint " << iteration_dir_name(progress.iteration) << " to '"
                                << root << "' failed: " << failure
                                << " (the previous checkpoint is intact and still the latest)";
}

void save_iteration_checkpoint(const std::string& root, const GptMoe& model, const AdamW& optimizer,
                               const TrainingProgress& progress, const TrainingGroups* groups,
                               const Tokenizer* tokenizer, int64_t keep, CheckpointFormat format) {
  if (format == CheckpointFormat::Sharded)
    return save_sharded_iteration(root, model, optimizer, progress, groups, tokenizer, keep);
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

// checkpoint_problem for a sharded directory: its own checks, then the stamp and the tokenizer.
static std::string sharded_problem(const std::string& dir) {
  std::map<std::string, std::string> model_meta;
  int64_t iteration = -1;
  try {
    const ShardedCheckpoint checkpoint(dir);
    model_meta = checkpoint.model_metadata();
    iteration = checkpoint.iteration();
  } catch (const std::exception& e) {
    return e.what();
  }
  const int64_t named = parse_iteration_name(fs::path(dir).filename().string());
  if (named >= 0 && named != iteration) return "its files are stamped iteration " + std::to_string(iteration);
  const auto tok = model_meta.find("tokenizer");
  if (tok != model_meta.end() && tok->second != "byte" && !fs::exists(checkpoint_tokenizer_path(dir)))
    return "tokenizer.model: missing";
  return "";
}

std::string checkpoint_problem(const std::string& dir) {
  if (is_sharded_checkpoint(dir)) return sharded_problem(dir);
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
  if (step < 0 && !has_tracker &&
      (fs::exists(model_path(dir), ec) || is_sharded_checkpoint(dir) || is_hf_checkpoint(dir)))
    return {dir, ""};
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

namespace checkpoint_detail {

std::string model_path(const std::string& dir) { return (fs::path(dir) / "model.safetensors").string(); }
std::string optimizer_path(const std::string& dir) {
  return (fs::path(dir) / "optimizer.safetensors").string();
}

const TensorParallelShard* find_shard(const std::vector<TensorParallelShard>& shards,
                                      const std::string& name) {
  for (const TensorParallelShard& s : shards)
    if (s.name == name) return &s;
  return nullptr;
}

Shape whole_shape(const Parameter& p, int64_t experts, const std::vector<TensorParallelShard>& shards) {
  const TensorParallelShard* shard = p.tensor_parallel ? find_shard(shards, p.name) : nullptr;
  Shape s = shard != nullptr ? shard->full_shape : p.value.shape();
  if (p.is_expert) s[0] = experts;
  return s;
}

Tensor local_part(const Parameter& p, const Tensor& whole, const std::vector<TensorParallelShard>& shards) {
  const Tensor local = p.is_expert ? whole.rows(p.expert_offset, p.expert_offset + p.value.dim(0)) : whole;
  if (const TensorParallelShard* shard = p.tensor_parallel ? find_shard(shards, p.name) : nullptr)
    return take_tensor_parallel_shard(local.is_contiguous() ? local : local.clone(), *shard);
  return local;
}

int64_t global_offset(const Parameter& p) {
  if (!p.is_expert || p.value.dim(0) == 0) return 0;
  return p.expert_offset * (p.value.numel() / p.value.dim(0));
}

std::string files_dir(const std::string& dir) {
  std::error_code ec;
  if (fs::exists(model_path(dir), ec) || is_sharded_checkpoint(dir) || !fs::exists(tracker_path(dir), ec))
    return dir;
  return iteration_path(dir, read_tracker(dir));
}

}  // namespace checkpoint_detail

}  // namespace ampipe

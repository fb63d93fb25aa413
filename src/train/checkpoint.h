// Checkpoints: DIR/model.safetensors (weights, names and config metadata as docs/MODEL.md) and
// DIR/optimizer.safetensors (AdamW moments, step, and the data position).
//
// train --save ROOT lays checkpoints out as Megatron-LM does: ROOT/iter_0000500/ (7-digit iteration,
// the files above) and ROOT/latest_checkpointed_iteration.txt (the iteration, as text). An iteration
// directory is written as ROOT/iter_0000500.tmp, every file fsynced, then renamed into place (ROOT
// fsynced), and only then is the tracker replaced atomically: after a crash at any moment the tracker
// names a complete checkpoint (the previous one or the new one). save_iteration_checkpoint does this;
// locate_checkpoint resolves ROOT (the tracker's iteration, or --ckpt-step's) and verifies it.
//
// --ckpt-format sharded replaces the two files by one shard per rank and an index
// (train/sharded_checkpoint.h), under the same directory layout and crash rules.
//
// The readers also accept a Hugging Face Mixtral directory (train/hf_checkpoint.h): config.json and
// model.safetensors or its sharded index, without ampipe's metadata. It holds weights only.
//
// Each file is written atomically (temp file + fsync + rename). The optimizer file is written first
// and the model file last, both stamped with the iteration; a load refuses a pair whose stamps
// differ (a crash between the two renames), so a resumed run never mixes two checkpoints.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>

#include "model/gpt.h"
#include "train/distributed.h"
#include "train/optimizer.h"
#include "train/tokenizer.h"

namespace ampipe {

// The optimizer and learning-rate schedule a run trains with (Megatron's "opt_param_scheduler"
// settings), recorded in optimizer.safetensors so that a resumed run continues the same schedule
// (train/resume_schedule.h applies the rules).
struct ScheduleSettings {
  LrSchedule lr;      // lr, min_lr, warm-up; decay_iters is train_iters
  AdamWConfig adamw;  // weight decay, betas, eps, clip
  int64_t train_iters = 0;
  int64_t global_batch = 0;  // micro-batch x data-parallel ranks
};

struct TrainingProgress {
  int64_t iteration = 0;  // iterations completed
  uint64_t seed = 0;      // data-order seed
  std::optional<ScheduleSettings> schedule;  // recorded with the optimizer state when set
};

// --ckpt-format: one file pair written by world rank 0 from the gathered state (gathered, the
// default), or every rank its own shard in parallel plus an index (sharded,
// train/sharded_checkpoint.h). The readers below take both, whatever the layout that loads them.
enum class CheckpointFormat { Gathered, Sharded };

// With `groups` (a parallel run) expert tensors are gathered over the expert group, so the file
// holds all experts, and world rank 0 writes; collective over the world. Any layout can load it.
// A model on the GPU is copied to the host first: the file is the same on every device.
// A subword tokenizer travels with the checkpoint as DIR/tokenizer.model (written before the
// model file; the model's config names the tokenizer's identity, train/tokenizer.h).
void save_checkpoint(const std::string& dir, const GptMoe& model, const AdamW& optimizer,
                     const TrainingProgress& progress, const TrainingGroups* groups = nullptr,
                     const Tokenizer* tokenizer = nullptr);

// ROOT/iter_NNNNNNN as one iteration checkpoint (the layout above): written under a temporary name,
// renamed into place, then ROOT/latest_checkpointed_iteration.txt; with keep > 0 the iteration
// directories older than the newest `keep` complete ones (at or below this iteration) are deleted
// after the tracker is written. On any failure the temporary directory is removed, the tracker and
// the previous checkpoints are untouched, and an ampipe::Error is thrown on every rank. Collective.
// With CheckpointFormat::Sharded every rank writes the elements the optimizer's owned_ranges name
// (each element once over the world: the optimizer must have been given the run's GradientBuckets
// on more than one rank), and no rank gathers the model.
void save_iteration_checkpoint(const std::string& root, const GptMoe& model, const AdamW& optimizer,
                               const TrainingProgress& progress, const TrainingGroups* groups = nullptr,
                               const Tokenizer* tokenizer = nullptr, int64_t keep = 0,
                               CheckpointFormat format = CheckpointFormat::Gathered);

// One job at a time per --save ROOT: an exclusive lock (flock) on ROOT/.ampipe-save.lock, held from
// construction (ROOT is created if missing) until destruction or the process's end (a killed job
// releases it with its file descriptors, so a restart is never locked out). The file records the
// holder's host and pid. Throws ampipe::Error naming the holder when another process holds it: two
// jobs saving into one directory would overwrite each other's iterations and tracker. The trainer's
// writing rank (world rank 0) takes it before anything is read or written. flock is advisory and
// local to one machine (and to NFS servers that map it to byte-range locks).
class SaveDirectoryLock {
 public:
  explicit SaveDirectoryLock(const std::string& root);
  ~SaveDirectoryLock();
  SaveDirectoryLock(const SaveDirectoryLock&) = delete;
  SaveDirectoryLock& operator=(const SaveDirectoryLock&) = delete;
  static std::string lock_path(const std::string& root);

 private:
  int fd_ = -1;
};

// "iter_0000500"; ROOT/latest_checkpointed_iteration.txt.
std::string iteration_dir_name(int64_t iteration);
std::string tracker_path(const std::string& root);

// Why the checkpoint in DIR (one iteration directory, or a single-checkpoint directory) cannot be
// resumed from: a missing or unreadable model/optimizer file, mismatched iteration stamps, a missing
// tokenizer file. Empty when complete. Reads headers only.
std::string checkpoint_problem(const std::string& dir);

struct CheckpointLocation {
  std::string path;    // the directory holding model.safetensors (or a Hugging Face one); "" = none yet
  std::string notice;  // why there is none (starting from scratch), for the log
};
// Resolves --load DIR: DIR itself when it holds model.safetensors (a single-checkpoint or iteration
// directory) or is a Hugging Face directory; else DIR/iter_<step> when step >= 0, else the tracker's
// iteration. A missing or empty DIR, or one without a tracker, has no checkpoint yet (path ""). A
// resolved iteration that is incomplete is refused, naming the previous complete one.
CheckpointLocation locate_checkpoint(const std::string& dir, int64_t step = -1);
// locate_checkpoint for a reader (eval, sample, export): refuses a DIR without a checkpoint.
std::string checkpoint_to_read(const std::string& dir, int64_t step = -1);

// DIR/tokenizer.model.
std::string checkpoint_tokenizer_path(const std::string& dir);
// The tokenizer a checkpoint's model was trained with (config.tokenizer): byte-level, or the
// SentencePiece model saved beside it, or `override_model` when given; refuses a tokenizer whose
// identity differs from the one recorded (naming both), or a missing file.
std::unique_ptr<Tokenizer> checkpoint_tokenizer(const std::string& dir, const ModelConfig& config,
                                                const std::string& override_model = "");

// The readers below accept an iteration root too (they read its tracker's iteration).
// The model config stored in DIR/model.safetensors (validated), or in a Hugging Face DIR's config.json.
ModelConfig read_checkpoint_config(const std::string& dir);
// Copies DIR's weights into the model (each rank its own experts' slice, onto the model's device);
// refuses a config that differs from the model's, missing or extra tensors, and shape mismatches,
// naming each.
void load_model_weights(const std::string& dir, GptMoe& model);
// False for a directory that holds weights only (a Hugging Face one): training starts from its
// weights with a fresh optimizer at iteration 0 instead of calling load_training_state.
bool has_training_state(const std::string& dir);
// The schedule settings recorded in DIR's optimizer.safetensors; none for a checkpoint without
// them (written before they were recorded) or without training state (a Hugging Face directory).
// Throws ampipe::Error naming the file on a malformed value.
std::optional<ScheduleSettings> read_schedule_settings(const std::string& dir);
// The iteration of DIR's training state (its optimizer file's stamp, from the header alone); -1 for
// a directory without training state (a Hugging Face one). Throws ampipe::Error on a malformed stamp.
int64_t checkpoint_iteration(const std::string& dir);
// Restores the optimizer state (sliced like the weights) and returns the progress to resume from.
TrainingProgress load_training_state(const std::string& dir, const GptMoe& model, AdamW& optimizer);

}  // namespace ampipe

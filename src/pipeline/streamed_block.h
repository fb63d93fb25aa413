// StreamedBlock: runs a block's schedule on two streams, compute and communication, so that the
// all-to-all of one chunk overlaps the attention or the experts of another
// (docs/ARCHITECTURE.md, "One block under AMPipe"; core/stream.h).
//
// It executes the task lists of pipeline/task_list.h for the schedule's chunk plan: each task on
// its stream, in list order, waiting on events of the other stream's tasks it depends on. Every
// communicator call of the block is a comm-stream task, so every rank issues the collectives in
// one program order and overlapping can never reorder them. The attention side writes its chunks
// into a token buffer that the MoE side reads in its own chunks (equal to the attention chunks
// unless the schedule cuts the MoE side separately). A sequential schedule runs as one chunk of the
// whole sequence: the same block, its stages still on the two streams, where they can be timed and
// traced but cannot overlap.
// The host thread only issues work and waits at the end of forward() and backward(). Each stream
// runs its stages in program order, so results do not depend on timing.
//
// Over several blocks (forward_layers / backward_layers) the whole pass is one task list in the
// executor's PipelineScope (pipeline/task_list.h): `block` drains between blocks as one block at a
// time does; `model` lets the chunks flow through the blocks as a wavefront. The host still waits
// only at the end of the pass. A block's saved activations are released by its last backward task.
// Tasks of block l carry " L<l>" in their trace label when the pass has more than one block.
// paired_layers (--overlap-moe-expert-parallel-comm) runs one micro-batch's backward pass and the
// next one's forward pass as one merged list (pipeline/paired_tasks.h) on the same two streams.
// A block with tensor-parallel attention (AttentionLayer::tp_size() > 1, whose all-reduces are
// blocking calls inside its stages) is refused with ampipe::Error before any task, whatever the
// schedule: pipelined schedules with --tensor-model-parallel-size > 1 are not built yet.
#pragma once

#include <memory>

#include "core/stream.h"
#include "model/block.h"
#include "pipeline/schedule.h"

namespace ampipe {

class StreamedBlock final : public BlockExecutor {
 public:
  // trace (borrowed, may be null): one slice per stage and chunk on "compute" / "comm" tracks of
  // rank `rank`.
  // Device::CUDA runs the two streams as GPU streams (core/stream.h): tasks enqueue on their own CUDA
  // streams, ordered by CUDA events, so compute and communication overlap on the device too.
  StreamedBlock(const BlockSchedule& schedule, StageOrder order, TraceRecorder* trace = nullptr, int rank = 0,
                PipelineScope scope = PipelineScope::Block, Device device = Device::CPU);

  Tensor forward(const Block& block, BlockContext& ctx, const Tensor& x, int64_t batch, int64_t seq_len,
                 RoutingStats& stats) const override;
  Tensor backward(const Block& block, BlockContext& ctx, const Tensor& dy, const RoutingStats& stats,
                  double aux_grad_scale) const override;

  // block_needed runs as a ParamGather task on the comm stream (pipeline/task_list.h).
  Tensor forward_layers(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx, const Tensor& x,
                        int64_t batch, int64_t seq_len, std::vector<RoutingStats>& stats,
                        const std::function<void(int64_t)>& block_needed = {}) const override;
  // block_done runs as a GradReduce task on the comm stream (pipeline/task_list.h).
  Tensor backward_layers(const std::vector<Block>& blocks, std::vector<BlockContext>& ctx, const Tensor& dy,
                         const std::vector<RoutingStats>& stats, double aux_grad_scale,
                         const std::function<void(int64_t)>& block_done) const override;

  // Both passes' tasks in one list (pipeline/paired_tasks.h), merged by the seconds of
  // set_task_seconds; the forward takes its plan from forward.seq_len, the backward the plan of the
  // forward it belongs to.
  std::pair<Tensor, Tensor> paired_layers(const std::vector<Block>& blocks, PairedBackward backward,
                                          PairedForward forward) const override;

  // --delay-wgrad-compute: backward lists carry ExpertsWgrad tasks (pipeline/task_list.h PassShape).
  void set_delay_wgrad(bool delay) { delay_wgrad_ = delay; }
  bool delay_wgrad() const { return delay_wgrad_; }
  // The predicted seconds of a task of a list cut by `plan` (any unit), by which paired_layers merges
  // its two passes. `plan` is of the whole sequence (under sequence parallelism the pass's local
  // boundaries times T, as the planner's BlockShape prices them). Every rank must get the same values (the merge fixes the order of the
  // collectives). Unset: 1 for every task.
  using TaskSeconds = std::function<double(const StageTask&, const ChunkPlan&)>;
  void set_task_seconds(TaskSeconds seconds) { task_seconds_ = std::move(seconds); }

  const BlockSchedule& schedule() const { return schedule_; }
  StageOrder order() const { return order_; }
  PipelineScope scope() const { return scope_; }

  // Fault injection for tests: every later task labelled `task_label` (its trace label, e.g.
  // "experts bwd c0 L1") throws instead of running. Empty: none.
  void inject_failure(std::string task_label) { inject_failure_ = std::move(task_label); }

 private:
  BlockSchedule schedule_;
  StageOrder order_;
  PipelineScope scope_;
  Device device_;
  std::unique_ptr<Stream> compute_, comm_;
  std::string inject_failure_;
  bool delay_wgrad_ = false;
  TaskSeconds task_seconds_;
  mutable ChunkPlan plan_;  // of the latest forward(), for its backward()

  // The pass over `blocks`, with their tensor-parallel size (the attention's all-reduces as tasks).
  PassShape forward_shape(const std::vector<Block>& blocks, bool gather_params) const;
  PassShape backward_shape(const std::vector<Block>& blocks, bool reduce_gradients) const;

  // Runs `tasks` on the two streams, calling run(task) for each; waits for both streams.
  void execute(const std::vector<StageTask>& tasks, const std::function<void(const StageTask&)>& run,
               bool label_layers) const;
};

}  // namespace ampipe

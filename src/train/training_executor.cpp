#include "train/training_executor.h"

#include <cstdio>
#include <optional>
#include <utility>
#include <vector>

#include "pipeline/streamed_block.h"
#include "plan/autotune.h"
#include "plan/calibrate.h"

namespace ampipe {

// The hardware profile of the planner and of the paired step's merge: --hardware, or a quick
// calibration of this machine (collective: every rank gets the same profile, so the same choices).
static HardwareProfile run_profile(const TrainOptions& o, Communicator& world) {
  if (!o.hardware.empty()) return load_hardware_profile(o.hardware);
  CalibrateOptions co;
  co.quick = true;
  co.hidden_sizes = {o.model.hidden_size};
  return calibrate(world, co);
}

// One block of the run as the planner sees it.
static BlockShape run_block_shape(const TrainOptions& o, const TrainingGroups& groups) {
  BlockShape shape{o.model, o.micro_batch_size, o.model.max_seq_len, groups.expert_group->size()};
  shape.sharded_optimizer = o.use_distributed_optimizer;
  shape.data_ranks = groups.data_parallel_group()->size();
  shape.tensor_parallel = o.tensor_parallel_size;        // the attention's all-reduces priced as comm tasks
  shape.sequence_parallel = groups.sequence_parallel();  // gathers and reduce-scatters instead
  shape.expert_tensor_parallel = o.expert_tensor_parallel_size;  // and the experts' (ETP)
  shape.delay_wgrad = o.delay_wgrad_compute;
  return shape;
}

// --pipe-degree auto: the planner's choice for this model on this machine.
// scope: the one --pipeline-scope fixes, or none (the planner picks it too).
static std::pair<PlanCandidate, double> plan_block(const TrainOptions& o, const HardwareProfile& hw,
                                                   const TrainingGroups& groups,
                                                   std::optional<PipelineScope> scope) {
  const BlockShape shape = run_block_shape(o, groups);
  AutotuneOptions ao;
  if (o.schedule.kind == ScheduleKind::MoePipe) ao.schedules = {ScheduleKind::MoePipe};  // ampipe: both
  ao.num_layers = o.model.num_layers;
  ao.reduce_gradients = o.overlap_grad_reduce;
  ao.gather_params = o.overlap_param_gather;
  if (scope) ao.scopes = {*scope};
  const std::vector<PlanCandidate> candidates = evaluate_candidates(shape, hw, ao);
  double sequential_seconds = 0;
  for (const PlanCandidate& c : candidates)
    if (c.schedule.kind == ScheduleKind::Sequential) sequential_seconds = c.prediction.total;
  return {choose_plan(candidates, ao.min_gain, ao.near_tie), sequential_seconds};
}

// --overlap-moe-expert-parallel-comm auto: pair unless the planner predicts the paired step slower
// (predict_pairing), for the schedule the run uses. Sets the option to "on" or "off".
static void choose_pairing(TrainOptions& o, const HardwareProfile& hw, const TrainingGroups& groups,
                           PipelineScope scope, int64_t micro_batches,
                           const std::function<void(const std::string&)>& log) {
  PassShape pass{o.model.num_layers, scope, o.overlap_grad_reduce, o.overlap_param_gather,
                 o.delay_wgrad_compute};
  const BlockShape shape = run_block_shape(o, groups);
  const StageOrder order = parse_stage_order(o.stage_order);
  const PairingPrediction p = predict_pairing(o.schedule, order, shape, hw, pass, micro_batches);
  const bool pair = p.pair;
  o.overlap_moe_expert_parallel_comm = pair ? "on" : "off";
  char line[320];
  std::snprintf(line, sizeof line,
                "planner: micro-batches %s (predicted step %.2f ms paired, %.2f ms unpaired, bound %.2f ms; "
                "--overlap-moe-expert-parallel-comm auto)",
                pair ? "paired" : "unpaired", p.paired.total * 1e3, p.unpaired.total * 1e3,
                p.unpaired.step_bound * 1e3);
  log(line);
}

// The scope of --pipeline-scope auto without the planner: the chunks flow across blocks wherever
// there are chunks and more than one block.
static PipelineScope default_scope(const TrainOptions& o) {
  const bool chunked = o.schedule.kind != ScheduleKind::Sequential;
  return chunked && o.model.num_layers > 1 ? PipelineScope::Model : PipelineScope::Block;
}

// --pipe-degree auto, --overlap-moe-expert-parallel-comm auto, balanced weights, and the executor
// every block runs under (null: sequential).
std::unique_ptr<BlockExecutor> make_block_executor(TrainOptions& o, const TrainingGroups& groups,
                                                   TimedCommunicator& world, TraceRecorder* trace,
                                                   const std::function<void(const std::string&)>& log) {
  const int64_t N = o.model.max_seq_len;
  std::optional<PipelineScope> scope;
  if (o.pipeline_scope != "auto") scope = parse_pipeline_scope(o.pipeline_scope);
  const bool plans =
      o.auto_plan && o.schedule.kind != ScheduleKind::Sequential && o.schedule.chunk_boundaries.empty();
  const bool pairing = o.overlap_moe_expert_parallel_comm != "off";
  std::optional<HardwareProfile> hw;
  if (plans || pairing) hw = run_profile(o, world);
  if (plans) {
    const auto [choice, sequential_seconds] = plan_block(o, *hw, groups, scope);
    o.schedule = choice.schedule;
    o.stage_order = stage_order_name(choice.order);
    if (!scope) scope = choice.scope;
    char line[320];
    std::snprintf(line, sizeof line,
                  "planner: %s, predicted step of %lld blocks %.2f ms (sequential %.2f ms)",
                  choice.describe().c_str(), static_cast<long long>(o.model.num_layers),
                  choice.prediction.total * 1e3, sequential_seconds * 1e3);
    log(line);
  }
  if (!scope) scope = default_scope(o);
  o.pipeline_scope = pipeline_scope_name(*scope);
  if (o.schedule.chunk_policy == ChunkPolicy::Balanced && o.schedule.balance_weight == 0)
    o.schedule.balance_weight = balance_weight(o.model, o.schedule.moe_pipe_degree == 0);
  o.schedule.plan(N);  // refuse boundaries that do not fit the sequence before training
  if (o.overlap_moe_expert_parallel_comm == "auto")
    choose_pairing(o, *hw, groups, *scope, micro_batches_per_step(o, groups.data_parallel_group()->size()),
                   log);
  // A sequential block runs on the streams too when traced, so every schedule shows its stages, when
  // the gradient reduction overlaps the backward (on the comm stream), and when micro-batches pair.
  if (trace == nullptr && !o.overlap_grad_reduce && !pairing && o.schedule.kind == ScheduleKind::Sequential)
    return nullptr;
  auto executor = std::make_unique<StreamedBlock>(o.schedule, parse_stage_order(o.stage_order), trace,
                                                  world.rank(), *scope, o.device);
  executor->set_delay_wgrad(o.delay_wgrad_compute);
  if (hw) {
    // The paired passes merge by the cost model's seconds: the same profile, so the same order, on
    // every rank.
    executor->set_task_seconds(stage_pricer(run_block_shape(o, groups), *hw));
  }
  return executor;
}

}  // namespace ampipe

// The model, the optimizer and checkpoints on the GPU (--device cuda): the same function as on the
// CPU. GPU tests skip with the reason where no GPU can be used; the CLI tests run everywhere.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "comm/host_staged_communicator.h"
#include "comm/self_communicator.h"
#include "cli_util.h"
#include "core/device.h"
#include "core/random.h"
#include "model/gpt.h"
#include "pipeline/streamed_block.h"
#include "test_util.h"
#include "train/checkpoint.h"
#include "train/optimizer.h"
#include "train/trainer.h"

namespace ampipe {
namespace {

ModelConfig tiny_gpt() {
  ModelConfig c;
  c.vocab_size = 11;
  c.max_seq_len = 9;
  c.hidden_size = 8;
  c.num_attention_heads = 2;
  c.num_layers = 2;
  c.num_experts = 3;
  c.ffn_hidden_size = 6;
  c.top_k = 2;
  c.aux_loss_weight = 0.05;
  return c;
}

ModelConfig tiny_mixtral() {
  ModelConfig c = tiny_gpt();
  c.set_family("mixtral");
  c.hidden_size = 16;
  c.num_attention_heads = 4;
  c.num_query_groups = 2;
  c.rotary_base = 100;
  return c;
}

using ::ampipe::testing::random_tokens;

// max |a - b| over max |b|: the error relative to the tensor's scale.
double scaled_error(const std::vector<float>& a, const std::vector<float>& b) {
  double diff = 0, scale = 1e-12;
  for (size_t i = 0; i < a.size() && i < b.size(); ++i) {
    diff = std::max(diff, std::abs(static_cast<double>(a[i]) - b[i]));
    scale = std::max(scale, std::abs(static_cast<double>(b[i])));
  }
  return a.size() == b.size() ? diff / scale : INFINITY;
}

double relative(double a, double b) { return std::abs(a - b) / std::max(std::abs(b), 1e-12); }

// One forward + backward on each device from the same seed: loss and every gradient agree within
// `tol` (float32: reassociation only; bf16: also an operand moved across a rounding boundary).
void check_forward_backward(const ModelConfig& config, int64_t B, int64_t N,
                            const BlockExecutor* gpu_executor, double tol = 1e-4) {
  GptMoe cpu(config), gpu(config, {}, Device::CUDA);
  cpu.initialize(5);
  gpu.initialize(5);
  gpu.set_block_executor(gpu_executor);
  ASSERT_EQ(gpu.params().all().front().value.device(), Device::CUDA);
  const Tensor tokens = random_tokens(B * N, config.vocab_size, 1), targets = random_tokens(B * N, config.vocab_size, 2);
  ForwardState cs, gs;
  const LossParts cl = cpu.forward(cs, tokens, targets, B);
  const LossParts gl = gpu.forward(gs, tokens.to(Device::CUDA), targets.to(Device::CUDA), B);
  EXPECT_LE(relative(gl.lm_loss, cl.lm_loss), tol) << "gpu " << gl.lm_loss << " cpu " << cl.lm_loss;
  EXPECT_LE(relative(gl.aux_loss, cl.aux_loss), tol) << "gpu " << gl.aux_loss << " cpu " << cl.aux_loss;
  cpu.backward(cs);
  gpu.backward(gs);
  for (size_t i = 0; i < cpu.params().all().size(); ++i) {
    const Parameter& c = cpu.params().all()[i];
    const Parameter& g = gpu.params().all()[i];
    EXPECT_EQ(g.value.to_vector(), c.value.to_vector()) << c.name << ": initial values differ";
    EXPECT_LE(scaled_error(g.grad.to_vector(), c.grad.to_vector()), tol) << c.name;
    EXPECT_EQ(g.compute.defined(), c.compute.defined()) << c.name;
  }
}

TEST(ModelDevice, ForwardBackwardOnTheGpuMatchesTheCpu) {
  if (!ampipe::cuda_unavailable_reason().empty()) GTEST_SKIP() << ampipe::cuda_unavailable_reason();
  check_forward_backward(tiny_gpt(), 2, 7, nullptr);
}

TEST(ModelDevice, MixtralForwardBackwardOnTheGpuMatchesTheCpu) {
  if (!ampipe::cuda_unavailable_reason().empty()) GTEST_SKIP() << ampipe::cuda_unavailable_reason();
  check_forward_backward(tiny_mixtral(), 2, 9, nullptr);
}

// The chunked executor on the GPU (row indices of the chunks on the device) against the CPU's
// sequential block.
TEST(ModelDevice, AmpipeScheduleOnTheGpuMatchesTheCpu) {
  if (!ampipe::cuda_unavailable_reason().empty()) GTEST_SKIP() << ampipe::cuda_unavailable_reason();
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.pipe_degree = 3;
  const StreamedBlock executor(s, StageOrder::Interleaved, nullptr, 0, PipelineScope::Model);
  check_forward_backward(tiny_gpt(), 2, 9, &executor);
}

// --bf16 on the GPU (cublasGemmEx with float32 compute, bf16 copies and all-to-all rounding on the
// device) against --bf16 on the CPU, both families and the chunked executor. 1e-2 of each tensor's
// scale: a bf16 ulp is 2^-7 relative, and the two devices sum products in different orders.
TEST(ModelDevice, Bf16ForwardBackwardOnTheGpuMatchesTheCpu) {
  if (!ampipe::cuda_unavailable_reason().empty()) GTEST_SKIP() << ampipe::cuda_unavailable_reason();
  ModelConfig gpt = tiny_gpt(), mixtral = tiny_mixtral();
  gpt.bf16 = mixtral.bf16 = true;
  check_forward_backward(gpt, 2, 7, nullptr, 1e-2);
  check_forward_backward(mixtral, 2, 9, nullptr, 1e-2);
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.pipe_degree = 3;
  const StreamedBlock executor(s, StageOrder::Interleaved, nullptr, 0, PipelineScope::Model);
  check_forward_backward(gpt, 2, 9, &executor, 1e-2);
}

// Recomputation on the GPU (the kept group inputs and the second forward on the device) changes
// nothing: the same bits as keeping the activations, sequential and ampipe in model scope.
TEST(ModelDevice, RecomputationOnTheGpuIsBitIdentical) {
  if (!ampipe::cuda_unavailable_reason().empty()) GTEST_SKIP() << ampipe::cuda_unavailable_reason();
  ModelConfig config = tiny_gpt();
  config.num_layers = 3;
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.pipe_degree = 3;
  const StreamedBlock ampipe(s, StageOrder::Interleaved, nullptr, 0, PipelineScope::Model, Device::CUDA);
  for (const BlockExecutor* executor : {static_cast<const BlockExecutor*>(nullptr),
                                        static_cast<const BlockExecutor*>(&ampipe)}) {
    std::vector<std::vector<float>> grads[2];
    double loss[2];
    for (int recompute = 0; recompute < 2; ++recompute) {
      GptMoe model(config, {}, Device::CUDA);
      model.initialize(5);
      model.set_block_executor(executor);
      if (recompute) model.set_recompute(recompute_groups("uniform", 1, 3));
      const Tensor tokens = random_tokens(18, config.vocab_size, 1), targets = random_tokens(18, config.vocab_size, 2);
      ForwardState state;
      loss[recompute] = model.forward(state, tokens.to(Device::CUDA), targets.to(Device::CUDA), 2).total;
      model.backward(state);
      for (const Parameter& p : model.params().all()) grads[recompute].push_back(p.grad.to_vector());
    }
    EXPECT_EQ(loss[1], loss[0]);
    EXPECT_EQ(grads[1], grads[0]);
  }
}

// Paired micro-batches on the GPU (--overlap-moe-expert-parallel-comm: one backward and the next
// forward as one list on the two GPU streams), with delayed weight gradients: the same bits as the
// unpaired step on the GPU, three micro-batches with accumulated gradients.
TEST(ModelDevice, PairedMicroBatchesOnTheGpuAreBitIdentical) {
  if (!ampipe::cuda_unavailable_reason().empty()) GTEST_SKIP() << ampipe::cuda_unavailable_reason();
  ModelConfig config = tiny_gpt();
  config.num_layers = 2;
  BlockSchedule s;
  s.kind = ScheduleKind::AmPipe;
  s.pipe_degree = 3;
  std::vector<std::vector<float>> grads[2];
  std::vector<double> losses[2];
  for (int paired = 0; paired < 2; ++paired) {
    StreamedBlock executor(s, StageOrder::Interleaved, nullptr, 0, PipelineScope::Model, Device::CUDA);
    executor.set_delay_wgrad(paired == 1);
    GptMoe model(config, {}, Device::CUDA);
    model.initialize(5);
    model.set_block_executor(&executor);
    ForwardState states[3];
    auto tokens = [&](int m, uint64_t salt) {
      return random_tokens(18, config.vocab_size, 10 * m + salt).to(Device::CUDA);
    };
    losses[paired].push_back(model.forward(states[0], tokens(0, 1), tokens(0, 2), 2).total);
    for (int m = 1; m < 3; ++m) {
      if (paired) {
        losses[paired].push_back(
            model.backward_and_forward(states[m - 1], 1.0 / 3, states[m], tokens(m, 1), tokens(m, 2), 2)
                .total);
      } else {
        model.backward(states[m - 1], 1.0 / 3);
        losses[paired].push_back(model.forward(states[m], tokens(m, 1), tokens(m, 2), 2).total);
      }
    }
    model.backward(states[2], 1.0 / 3);
    for (const Parameter& p : model.params().all()) grads[paired].push_back(p.grad.to_vector());
  }
  EXPECT_EQ(losses[1], losses[0]);
  EXPECT_EQ(grads[1], grads[0]);
}

// 20 AdamW steps on each device follow the same losses.
TEST(ModelDevice, TrainingOnTheGpuFollowsTheCpu) {
  if (!ampipe::cuda_unavailable_reason().empty()) GTEST_SKIP() << ampipe::cuda_unavailable_reason();
  const ModelConfig config = tiny_gpt();
  GptMoe cpu(config), gpu(config, {}, Device::CUDA);
  cpu.initialize(3);
  gpu.initialize(3);
  AdamWConfig ac;
  AdamW cpu_opt(cpu.params(), ac), gpu_opt(gpu.params(), ac);
  const int64_t B = 2, N = 8;
  for (int step = 0; step < 20; ++step) {
    const Tensor tokens = random_tokens(B * N, config.vocab_size, 100 + step);
    const Tensor targets = random_tokens(B * N, config.vocab_size, 200 + step);
    double losses[2], norms[2];
    for (int d = 0; d < 2; ++d) {
      GptMoe& model = d == 0 ? cpu : gpu;
      AdamW& opt = d == 0 ? cpu_opt : gpu_opt;
      model.params().zero_grad();
      ForwardState state;
      losses[d] = model.forward(state, tokens.to(model.device()), targets.to(model.device()), B).total;
      model.backward(state);
      norms[d] = opt.step(1e-3);
    }
    EXPECT_LE(relative(losses[1], losses[0]), 1e-4) << "step " << step << ": gpu " << losses[1] << " cpu " << losses[0];
    EXPECT_LE(relative(norms[1], norms[0]), 1e-3) << "step " << step << ": gradient norms";
  }
}

// A checkpoint saved from a GPU model is the usual float32 file: the CPU evaluates it to the GPU's loss.
TEST(ModelDevice, GpuCheckpointEvaluatesOnTheCpu) {
  if (!ampipe::cuda_unavailable_reason().empty()) GTEST_SKIP() << ampipe::cuda_unavailable_reason();
  const ModelConfig config = tiny_gpt();
  GptMoe gpu(config, {}, Device::CUDA);
  gpu.initialize(9);
  AdamW opt(gpu.params(), AdamWConfig{});
  const Tensor tokens = random_tokens(16, config.vocab_size, 4), targets = random_tokens(16, config.vocab_size, 5);
  for (int step = 0; step < 3; ++step) {  // weights and moments that are not the initial ones
    gpu.params().zero_grad();
    ForwardState state;
    gpu.forward(state, tokens, targets, 2);
    gpu.backward(state);
    opt.step(1e-2);
  }
  ForwardState gs;
  const double gpu_loss = gpu.forward(gs, tokens, targets, 2).lm_loss;
  const std::string dir = testing::fresh_temp_dir("gpu_checkpoint");
  save_checkpoint(dir, gpu, opt, TrainingProgress{3, 1, std::nullopt});
  GptMoe cpu(config);
  load_model_weights(dir, cpu);
  ForwardState cs;
  const double cpu_loss = cpu.forward(cs, tokens, targets, 2).lm_loss;
  EXPECT_LE(relative(cpu_loss, gpu_loss), 1e-4) << "cpu " << cpu_loss << " gpu " << gpu_loss;
  for (size_t i = 0; i < cpu.params().all().size(); ++i)
    EXPECT_EQ(cpu.params().all()[i].value.to_vector(), gpu.params().all()[i].value.to_vector())
        << cpu.params().all()[i].name;
  // And back: the file loads onto the GPU with its optimizer state.
  GptMoe again(config, {}, Device::CUDA);
  AdamW again_opt(again.params(), AdamWConfig{});
  load_model_weights(dir, again);
  EXPECT_EQ(load_training_state(dir, again, again_opt).iteration, 3);
  EXPECT_EQ(again_opt.state_tensors()[0].second.device(), Device::CUDA);
  EXPECT_EQ(again_opt.state_tensors()[0].second.to_vector(), opt.state_tensors()[0].second.to_vector());
}

// Four ranks over a host-only backend (like MPI): only what the rank check asks of it works.
class FourHostOnlyRanks final : public Communicator {
 public:
  int rank() const override { return 0; }
  int size() const override { return 4; }
  std::string backend() const override { return "mpi"; }
  std::unique_ptr<Communicator> split(int, int) const override { return nullptr; }
  void all_to_all_v(const Tensor&, const std::vector<int64_t>&, Tensor, const std::vector<int64_t>&) override {}
  void all_to_all(const std::vector<int64_t>&, std::vector<int64_t>&) override {}
  void all_reduce_sum(Tensor) override {}
  void all_reduce_sum(double&) override {}
  void all_reduce_sum(int64_t&) override {}
  void all_reduce_max(double&) override {}
  void all_reduce_max(int64_t&) override {}
  void broadcast(Tensor, int) override {}
  void broadcast_bytes(std::string&, int) override {}
  void all_gather(const Tensor&, Tensor) override {}
  void barrier() override {}
  [[noreturn]] void abort(int, const std::string& message) override { throw Error(message); }
};

// Everywhere: --device names its two values; cuda over a host-only backend of several ranks is
// refused with what to do, and accepted through host staging (for_device).
TEST(ModelDevice, DeviceFlagValuesAndCommunicatorCheck) {
  EXPECT_EQ(parse_device("cpu"), Device::CPU);
  EXPECT_THROW(parse_device("gpu"), Error);
  FourHostOnlyRanks mpi;
  try {
    require_device_communicator(Device::CUDA, &mpi);
    ADD_FAILURE() << "cuda over a host-only backend of 4 ranks was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("--device cuda with 4 ranks needs a communicator that moves GPU buffers, "
                                         "but the 'mpi' backend moves host buffers only"),
              std::string::npos)
        << e.what();
  }
  EXPECT_NO_THROW(require_device_communicator(Device::CPU, &mpi));
  EXPECT_NO_THROW(require_device_communicator(Device::CUDA, nullptr));
  std::unique_ptr<Communicator> holder;
  EXPECT_EQ(&for_device(mpi, Device::CPU, holder), &mpi);
  EXPECT_EQ(holder, nullptr);
  Communicator& staged = for_device(mpi, Device::CUDA, holder);
  EXPECT_EQ(staged.backend(), "mpi+host-staged");
  EXPECT_NO_THROW(require_device_communicator(Device::CUDA, &staged));
  SelfCommunicator self;
  EXPECT_EQ(&for_device(self, Device::CUDA, holder), &self) << "the one-rank backend moves device buffers itself";
}

// Without a usable GPU every command refuses --device cuda, naming the reason.
TEST(ModelDevice, CudaWithoutAGpuFailsWithTheReason) {
  const std::string reason = ampipe::cuda_unavailable_reason();
  if (reason.empty()) GTEST_SKIP() << "a GPU is usable here";
  EXPECT_THROW(parse_device("cuda"), Error);
  const std::string dir = testing::fresh_temp_dir("device_flag");
  for (const std::string& args :
       {std::string("train --device cuda --train-iters 1"), "eval --device cuda --load " + dir,
        "sample --device cuda --load " + dir, std::string("bench --device cuda --repeats 1 --warmup 0")}) {
    const testing::RunResult r = testing::run_ampipe(args);
    EXPECT_EQ(r.status, 1) << args << "\n" << r.output;
    EXPECT_NE(r.output.find("--device cuda needs an NVIDIA GPU"), std::string::npos) << args << "\n" << r.output;
    EXPECT_NE(r.output.find(reason), std::string::npos) << args << "\n" << r.output;
  }
}

}  // namespace
}  // namespace ampipe

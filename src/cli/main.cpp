// ampipe: one binary, subcommands train / eval / sample / bench / plan / export / preprocess /
// tokenizer train. Each subcommand's flags live in its own file (cli/*_command.h and the others);
// this file registers them, parses, and dispatches.
//
// Errors inside the engine are ampipe::Error exceptions; this file is the edge that turns them into
// one line on stderr ("ampipe: error: ...") and exit status 1. Bad flags too (cli/command_line.h).
#include <CLI/CLI.hpp>
#include <csignal>
#include <cstdio>
#include <memory>
#include <string>

#include "cli/bench.h"
#include "cli/command_line.h"
#include "cli/data_commands.h"
#include "cli/export_command.h"
#include "cli/inference_commands.h"
#include "cli/plan.h"
#include "cli/train_command.h"
#include "comm/nccl_communicator.h"
#include "comm/world.h"
#include "core/exit_signal.h"
#include "core/memory.h"
#include "core/parallel.h"

namespace {

using namespace ampipe;

// Every subcommand's options, bound to the flags while parsing.
struct Commands {
  TrainCommand train;
  EvalCommand eval;
  SampleCommand sample;
  BenchOptions bench;
  PlanOptions plan;
  ExportOptions export_options;
  PreprocessOptions preprocess;
  TokenizerTrainOptions tokenizer;
  double timeout_minutes = 10.0;
  CLI::App *train_cmd = nullptr, *eval_cmd = nullptr, *sample_cmd = nullptr, *bench_cmd = nullptr,
           *plan_cmd = nullptr, *export_cmd = nullptr, *preprocess_cmd = nullptr,
           *tokenizer_train_cmd = nullptr;
};

void add_commands(CLI::App& app, Commands& c) {
  const int default_threads = available_cores();
  c.train_cmd = add_train_command(app, c.train, default_threads);
  c.eval_cmd = add_eval_command(app, c.eval, default_threads);
  c.sample_cmd = add_sample_command(app, c.sample, default_threads);
  c.bench_cmd = add_bench_command(app, c.bench);
  c.plan_cmd = add_plan_command(app, c.plan);
  c.export_cmd = add_export_command(app, c.export_options);
  c.preprocess_cmd = add_preprocess_command(app, c.preprocess);
  add_tokenizer_command(app, c.tokenizer, &c.tokenizer_train_cmd);
  // Every command that may run on several ranks: the deadline of one collective (comm/communicator.h).
  for (CLI::App* cmd : {c.train_cmd, c.eval_cmd, c.sample_cmd, c.bench_cmd, c.plan_cmd}) {
    cmd->add_option(
           "--distributed-timeout-minutes", c.timeout_minutes,
           "Under mpirun: a collective that some rank has not entered (or finished) this many minutes "
           "after this rank entered it ends the job, naming the rank and the call; fractions allowed. "
           "Set it above the longest a rank may wait for another (e.g. rank 0 writing a checkpoint)")
        ->check(CLI::PositiveNumber)
        ->capture_default_str();
  }
}

// `ampipe --version`: the version and the build's parts (docs/USAGE.md).
std::string version_text() {
#if defined(AMPIPE_GPU_EMULATOR)
  const char* cuda = "CUDA backend emulated on the CPU (-DAMPIPE_CUDA=EMULATE)";
#elif defined(AMPIPE_HAVE_CUDA)
  const char* cuda = "CUDA backend on";
#else
  const char* cuda = "CUDA backend off (CPU only)";
#endif
#if defined(__clang__)
  const char* compiler = "";  // __VERSION__ names clang itself
#else
  const char* compiler = "GCC ";
#endif
  const std::string sanitizer = AMPIPE_SANITIZER;
  const std::string nccl = nccl_version_text();
  return std::string("ampipe ") + AMPIPE_VERSION +
         "\nbuild: " + (*AMPIPE_BUILD_TYPE ? AMPIPE_BUILD_TYPE : "default") + ", " + cuda +
         (nccl.empty() ? "" : ", " + nccl) + ", BLAS OpenBLAS, bf16 GEMM oneDNN, MPI" +
         (sanitizer.empty() ? "" : ", sanitizer " + sanitizer) + ", compiler " +
         compiler + __VERSION__;
}

// Runs the parsed subcommand; throws ampipe::Error (or another std::exception) on failure.
int dispatch(Commands& c, Communicator& world) {
  if (c.train_cmd->parsed()) return run_train_command(c.train, world);
  if (c.eval_cmd->parsed()) return run_eval_command(c.eval, world);
  if (c.sample_cmd->parsed()) return run_sample_command(c.sample, world);
  if (c.bench_cmd->parsed()) return run_bench(c.bench, world);
  if (c.plan_cmd->parsed()) return run_plan(c.plan, world);
  if (c.export_cmd->parsed()) return run_export(c.export_options, world);
  if (c.preprocess_cmd->parsed()) return run_preprocess(c.preprocess);
  if (c.tokenizer_train_cmd->parsed()) return run_tokenizer_train(c.tokenizer);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ampipe: train Mixture-of-Experts GPT models with intra-block pipelining"};
  app.require_subcommand(1);
  // A flag given twice takes its last value, so a script's defaults can be overridden by appending.
  app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
  Commands commands;
  add_commands(app, commands);
  app.set_version_flag("--version", version_text(),
                       "Print the version and how this binary was built, and exit");
  const int parse_status = parse_command_line(app, argc, argv);
  if (parse_status >= 0) return parse_status;
  // A file-size limit (ulimit -f) makes a write fail with EFBIG, reported as an error (a failed
  // save leaves the previous checkpoint intact), instead of killing the process with SIGXFSZ.
  std::signal(SIGXFSZ, SIG_IGN);
  // The engine's commands keep freed memory in one heap (core/memory.h); the corpus commands run
  // many small allocations on many threads, which one heap would serialise.
  if (!commands.preprocess_cmd->parsed() && !commands.tokenizer_train_cmd->parsed() &&
      !commands.export_cmd->parsed())
    retain_freed_memory();
  std::unique_ptr<Communicator> world;
  try {
    // Under mpirun / srun this is the MPI world; otherwise this process alone.
    world = make_world_communicator(commands.timeout_minutes * 60.0);
    // After MPI's start-up, so these handlers are the ones that run (core/exit_signal.h).
    const bool train = commands.train_cmd->parsed();
    install_exit_signal_handlers(
        train && commands.train.options.exit_signal_handler,
        train ? ", without a checkpoint (--exit-signal-handler saves one first)" : "");
    return dispatch(commands, *world);
  } catch (const std::exception& e) {
    std::fflush(stdout);
    // In a parallel job one rank's error must end every rank (the others may be waiting in a
    // collective): abort() prints "ampipe: rank R: ..." and ends the whole job.
    if (world != nullptr && world->size() > 1) world->abort(1, std::string("error: ") + e.what());
    std::fprintf(stderr, "ampipe: error: %s\n", e.what());
    return 1;
  }
}

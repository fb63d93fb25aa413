// Stream and Event: in-order queues of work, and the edges that order work across queues.
//
// A schedule puts each rank's work on two streams (compute and comm) and orders them with events:
//   comm.wait(permuted);  comm.submit("a2a dispatch c0", ...);  comm.record(dispatched);
//   compute.wait(dispatched);  compute.submit("experts c0", ...);
// The calls return at once; the host blocks only in synchronize(). A GPU stream (Device::CUDA below)
// drives a cudaStream_t with cudaEvent_t (record = cudaEventRecord, wait = cudaStreamWaitEvent), so
// schedule code must not assume more than that:
// - A task is a function that does (CPU) or issues (GPU) the stage's work on this stream. On the CPU
//   backend every task of a stream runs on that stream's own worker thread, one at a time, in
//   submission order; do not rely on which host thread runs it, or on results on the host before
//   synchronize() / Event::synchronize().
// - Tasks must not call synchronize() on any stream (the CPU backend reports that on the task's own
//   stream as an error instead of deadlocking) and must not destroy their own stream.
// - Data a task uses must stay alive until the task has run: synchronize every stream that may
//   still use it (synchronize_all) before leaving the scope that owns it, also on error paths.
//   A task's function object (and what it captured) is destroyed before it counts as done.
//
// Events (CUDA semantics): record(e) marks the point after all work submitted to the stream so far;
// e completes when the stream reaches that point. An Event can be recorded again: wait(), query()
// and Event::synchronize() refer to the latest record() made BEFORE they are called, so a wait is
// never affected by a later re-record, and waits can never form a cycle. Waiting on an Event that
// was never recorded is a no-op. An Event is a handle: copies share the same state.
//
// Errors: an exception thrown by a task marks its stream failed (sticky, like a CUDA error). Later
// tasks on that stream are skipped; events it records later complete in an errored state; a stream
// that reaches a wait() on such an event fails too (skipping its remaining tasks instead of blocking
// forever). synchronize() waits for all work submitted so far and then, on a failed stream, throws
// ampipe::Error naming the stream, the task and the original message ("stream 'comm' task 'a2a
// dispatch c0' failed: ..."); it throws again on every later call. Make a new Stream to go on.
// submit(), record() and wait() never throw because of a failed task: they only enqueue, so a host
// that is issuing a schedule never unwinds while the other stream still runs tasks that use its
// data; failed() lets it stop issuing early. A stream destroyed with a task failure nobody
// synchronized prints the error to stderr.
//
// Waiting never spins: workers and synchronize() block on condition variables, so a stream that
// waits leaves its core to the compute threads.
//
// Thread-safety: every method may be called from any thread; calls from one thread are ordered as
// issued. The destructor runs all work already submitted (skipping it after a failure), then joins.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/device.h"

namespace ampipe {

class TraceRecorder;
class Stream;

class Event {
 public:
  Event();

  // True if the latest record() has been reached (also if the work before it failed), or if the
  // event was never recorded. Does not block.
  bool query() const;
  // Blocks the calling host thread until query() is true; throws ampipe::Error with the recording
  // stream's failure if the work before the latest record() failed.
  void synchronize() const;

 private:
  friend class Stream;
  struct State;
  std::shared_ptr<State> state_;
};

class Stream {
 public:
  // `name` appears in errors and, with a recorder attached, is this stream's track in rank
  // `trace_rank` of the trace: one slice per task that ran (named by the task, with an "error" arg
  // if it threw). The recorder must outlive the stream.
  // Device::CUDA makes a GPU stream: the worker drives its own non-blocking CUDA stream, made current
  // for its tasks (core/cuda/context.h), so the kernels they call enqueue there and return. record()
  // then also records a CUDA event; a GPU stream's wait() orders its device work after it
  // (cudaStreamWaitEvent) and a CPU stream's wait() blocks its worker until the device has passed it,
  // so its host tasks see the results. synchronize() and Event::synchronize() also wait for the
  // device, and a CUDA error found there fails the stream like a task's exception. Trace slices of
  // a GPU stream are host (enqueue) times. Throws without a usable GPU.
  explicit Stream(std::string name, TraceRecorder* trace = nullptr, int trace_rank = 0, Device device = Device::CPU);
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;

  const std::string& name() const;

  // Enqueues `task`; `task_name` names it in errors and traces (e.g. "attn fwd c2").
  void submit(std::string task_name, std::function<void()> task);
  // `event` completes when all work submitted to this stream before this call has run.
  void record(Event& event);
  // Work submitted to this stream after this call starts only once `event`'s latest record (as of
  // this call) has completed. The stream waits; the caller does not block.
  void wait(const Event& event);

  // Blocks until everything submitted so far has run or been skipped; throws ampipe::Error if the
  // stream has failed (see above).
  void synchronize();
  // Whether a task on this stream has failed, or it reached a wait on an errored event. Non-blocking.
  bool failed() const;

 private:
  friend void synchronize_all(const std::vector<Stream*>& streams);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Waits for every stream in `streams` (all of them, even when one has failed), then throws like
// Stream::synchronize() for the first failed one, preferring a stream whose own task failed (the
// root cause) over one that stopped at an errored event. Null entries are ignored.
void synchronize_all(const std::vector<Stream*>& streams);

}  // namespace ampipe

#include "core/stream.h"

#include "core/parallel.h"

#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <utility>

#include "core/error.h"
#include "core/trace.h"

namespace ampipe {

namespace {

// One record() of an Event: the point in a stream it marks, and whether the stream got there
// without a failure. Shared by the stream's queue (which completes it) and every waiter.
class Marker {
 public:
  Marker() = default;
  Marker(const Marker&) = delete;
  Marker& operator=(const Marker&) = delete;
  ~Marker() {
    if (device_event_ != nullptr) device_event_release(device_event_);
  }
  // On a GPU stream, the device event recorded at this point (set before complete()); null else.
  void set_device_event(void* event) { device_event_ = event; }
  void* device_event() const { return device_event_; }
  // Completes the marker; `error` empty means success.
  void complete(std::string error) {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      state_ = error.empty() ? State::Done : State::Errored;
      error_ = std::move(error);
    }
    cv_.notify_all();
  }
  bool done() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return state_ != State::Pending;
  }
  // Blocks until completed; returns the error ("" on success).
  std::string wait() const {
    std::unique_lock<std::mutex> lock(mutex_);
    cv_.wait(lock, [&] { return state_ != State::Pending; });
    return error_;
  }

 private:
  enum class State { Pending, Done, Errored };
  mutable std::mutex mutex_;
  mutable std::condition_variable cv_;
  State state_ = State::Pending;
  std::string error_;
  void* device_event_ = nullptr;
};

}  // namespace

struct Event::State {
  mutable std::mutex mutex;
  std::shared_ptr<Marker> latest;  // null until the first record()

  std::shared_ptr<Marker> snapshot() const {
    std::lock_guard<std::mutex> lock(mutex);
    return latest;
  }
};

Event::Event() : state_(std::make_shared<State>()) {}

bool Event::query() const {
  std::shared_ptr<Marker> marker = state_->snapshot();
  if (marker == nullptr) return true;
  if (!marker->done()) return false;
  return marker->device_event() == nullptr || device_event_query(marker->device_event());
}

void Event::synchronize() const {
  std::shared_ptr<Marker> marker = state_->snapshot();
  if (marker == nullptr) return;
  std::string error = marker->wait();
  if (!error.empty()) throw Error(error);
  if (marker->device_event() != nullptr) device_event_synchronize(marker->device_event());
}

struct Stream::Impl {
  enum class Kind { Task, Record, Wait };
  struct Op {
    Kind kind;
    std::string name;
    std::function<void()> task;
    std::shared_ptr<Marker> marker;  // Record: completed by this stream; Wait: waited on (may be null)
  };

  std::string name;
  TraceRecorder* trace;
  int trace_rank;
  void* device_stream = nullptr;  // the CUDA stream a GPU Stream drives; null for a CPU Stream

  mutable std::mutex mutex;
  std::condition_variable work_cv;  // the worker waits for ops or stopping
  std::condition_variable done_cv;  // synchronize() waits for completed to catch up
  std::deque<Op> queue;
  uint64_t submitted = 0;
  uint64_t completed = 0;
  bool stopping = false;

  // Failure state: written by the worker only, under `mutex`.
  std::string failure;          // non-empty once failed: the message synchronize() throws
  bool failure_is_own = false;  // a task of this stream threw (not a waited-on event's error)
  bool failure_reported = false;

  std::thread worker;  // started last, in the constructor

  Impl(std::string stream_name, TraceRecorder* recorder, int rank)
      : name(std::move(stream_name)), trace(recorder), trace_rank(rank) {}

  void enqueue(Op op) {
    {
      std::lock_guard<std::mutex> lock(mutex);
      queue.push_back(std::move(op));
      ++submitted;
    }
    work_cv.notify_one();
  }

  void run() {
    if (device_stream != nullptr) device_stream_make_current(device_stream);
    std::unique_lock<std::mutex> lock(mutex);
    while (true) {
      work_cv.wait(lock, [&] { return stopping || !queue.empty(); });
      if (queue.empty()) return;  // stopping, and drained
      Op op = std::move(queue.front());
      queue.pop_front();
      const std::string failure_so_far = failure;
      lock.unlock();

      std::string new_failure;
      bool own = false;
      execute(op, failure_so_far, new_failure, own);
      op.task = nullptr;  // release what the task captured before it counts as done
      op.marker.reset();

      lock.lock();
      if (!new_failure.empty() && failure.empty()) {
        failure = std::move(new_failure);
        failure_is_own = own;
      }
      ++completed;
      done_cv.notify_all();
    }
  }

  // Runs one op outside the lock. `failure_so_far` is the stream's failure when the op was taken.
  void execute(Op& op, const std::string& failure_so_far, std::string& new_failure, bool& own) {
    switch (op.kind) {
      case Kind::Task: {
        if (!failure_so_far.empty()) return;  // skipped after a failure
        const double start_us = trace != nullptr ? trace_clock_us() : 0.0;
        try {
          adopt_num_threads();  // kernels on this worker use the process's thread count
          op.task();
        } catch (const std::exception& e) {
          new_failure = "stream '" + name + "' task '" + op.name + "' failed: " + e.what();
        } catch (...) {
          new_failure = "stream '" + name + "' task '" + op.name +
                        "' failed: an exception not derived from std::exception";
        }
        own = !new_failure.empty();
        if (trace != nullptr) record_slice(op.name, start_us, new_failure);
        return;
      }
      case Kind::Record: {
        std::string error = failure_so_far;
        if (error.empty() && device_stream != nullptr) {
          try {
            op.marker->set_device_event(device_event_record(device_stream));
          } catch (const std::exception& e) {
            error = new_failure = "stream '" + name + "' failed to record an event: " + e.what();
            own = true;
          }
        }
        op.marker->complete(error);
        return;
      }
      case Kind::Wait: {
        if (!failure_so_far.empty() || op.marker == nullptr) return;
        std::string error = op.marker->wait();
        if (!error.empty()) {
          new_failure = "stream '" + name +
                        "' skipped its work after waiting on an event recorded after a failure: " + error;
          return;
        }
        // A GPU event: a GPU stream orders its later device work after it; a CPU stream's host
        // tasks read the results, so its host thread waits for the device.
        if (void* event = op.marker->device_event(); event != nullptr) {
          try {
            if (device_stream != nullptr) device_stream_wait_event(device_stream, event);
            else device_event_synchronize(event);
          } catch (const std::exception& e) {
            new_failure = "stream '" + name + "' failed waiting on a GPU event: " + e.what();
            own = true;
          }
        }
        return;
      }
    }
  }

  void record_slice(const std::string& task_name, double start_us, const std::string& error) {
    TraceSlice slice;
    slice.rank = trace_rank;
    slice.track = name;
    slice.name = task_name;
    slice.start_us = start_us;
    slice.duration_us = trace_clock_us() - start_us;
    if (!error.empty()) slice.args.emplace_back("error", error);
    try {
      trace->add_slice(std::move(slice));
    } catch (...) {
      // Out of memory while tracing: lose the slice, not the stream.
    }
  }

  // Blocks until everything submitted before the call is done, on the host and, for a GPU stream,
  // on the device (a device error becomes the stream's own failure). Caller holds `lock` on `mutex`.
  void drain(std::unique_lock<std::mutex>& lock) {
    const uint64_t target = submitted;
    done_cv.wait(lock, [&] { return completed >= target; });
    if (device_stream != nullptr && failure.empty()) {
      try {
        device_stream_synchronize(device_stream);
      } catch (const std::exception& e) {
        failure = "stream '" + name + "' failed on the GPU: " + e.what();
        failure_is_own = true;
      }
    }
  }

  void check_not_on_worker(const char* what) const {
    AMPIPE_CHECK(std::this_thread::get_id() != worker.get_id())
        << "stream '" << name << "': " << what
        << " called from one of its own tasks would wait for itself forever; "
           "order work with record()/wait() instead";
  }
};

Stream::Stream(std::string name, TraceRecorder* trace, int trace_rank, Device device)
    : impl_(std::make_unique<Impl>(std::move(name), trace, trace_rank)) {
  if (device == Device::CUDA) impl_->device_stream = device_stream_create();
  if (trace != nullptr) trace->declare_track(trace_rank, impl_->name);
  impl_->worker = std::thread([impl = impl_.get()] { impl->run(); });
}

Stream::~Stream() {
  {
    std::lock_guard<std::mutex> lock(impl_->mutex);
    impl_->stopping = true;
  }
  impl_->work_cv.notify_all();
  impl_->worker.join();
  if (impl_->device_stream != nullptr) {
    try {
      device_stream_destroy(impl_->device_stream);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ampipe: warning: stream '%s': %s\n", impl_->name.c_str(), e.what());
    }
  }
  if (impl_->failure_is_own && !impl_->failure_reported) {
    std::fprintf(stderr, "ampipe: warning: stream '%s' destroyed with an error nobody synchronized: %s\n",
                 impl_->name.c_str(), impl_->failure.c_str());
  }
}

const std::string& Stream::name() const { return impl_->name; }

void Stream::submit(std::string task_name, std::function<void()> task) {
  AMPIPE_CHECK(task != nullptr) << "stream '" << impl_->name << "': task '" << task_name << "' is empty";
  impl_->enqueue(Impl::Op{Impl::Kind::Task, std::move(task_name), std::move(task), nullptr});
}

void Stream::record(Event& event) {
  auto marker = std::make_shared<Marker>();
  impl_->enqueue(Impl::Op{Impl::Kind::Record, "record", nullptr, marker});
  // Published only once enqueued, so anyone who sees this marker can count on it completing.
  std::lock_guard<std::mutex> lock(event.state_->mutex);
  event.state_->latest = std::move(marker);
}

void Stream::wait(const Event& event) {
  std::shared_ptr<Marker> marker = event.state_->snapshot();
  if (marker == nullptr) return;  // never recorded: nothing to wait for
  impl_->enqueue(Impl::Op{Impl::Kind::Wait, "wait", nullptr, std::move(marker)});
}

void Stream::synchronize() {
  impl_->check_not_on_worker("synchronize()");
  std::unique_lock<std::mutex> lock(impl_->mutex);
  impl_->drain(lock);
  if (!impl_->failure.empty()) {
    impl_->failure_reported = true;
    throw Error(impl_->failure);
  }
}

bool Stream::failed() const {
  std::lock_guard<std::mutex> lock(impl_->mutex);
  return !impl_->failure.empty();
}

void synchronize_all(const std::vector<Stream*>& streams) {
  for (Stream* stream : streams) {
    if (stream != nullptr) stream->impl_->check_not_on_worker("synchronize_all()");
  }
  const Stream::Impl* root = nullptr;
  const Stream::Impl* first = nullptr;
  std::string message;
  for (Stream* stream : streams) {
    if (stream == nullptr) continue;
    Stream::Impl& impl = *stream->impl_;
    std::unique_lock<std::mutex> lock(impl.mutex);
    impl.drain(lock);
    if (impl.failure.empty()) continue;
    impl.failure_reported = true;
    if (first == nullptr) {
      first = &impl;
      message = impl.failure;
    }
    if (root == nullptr && impl.failure_is_own) {
      root = &impl;
      message = impl.failure;
    }
  }
  if (first != nullptr) throw Error(message);
}

}  // namespace ampipe

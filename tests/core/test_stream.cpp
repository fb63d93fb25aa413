// Stream and Event: in-order work per stream, event edges across streams, errors that reach the
// caller instead of hanging, waits that do not spin, and one trace slice per task.
#include <gtest/gtest.h>
#include <omp.h>

#include "core/parallel.h"
#include <sys/resource.h>

#include <atomic>
#include <chrono>
#include <future>
#include <memory>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "core/error.h"
#include "core/stream.h"
#include "core/trace.h"
#include "test_util.h"

namespace ampipe {
namespace {

using testing::error_of;

using namespace std::chrono_literals;

// Runs fn on its own thread and reports whether it finished within `limit`. On a timeout the
// thread is left behind (detached) so the test fails instead of hanging; fn must own its state.
bool finishes_within(std::chrono::milliseconds limit, std::function<void()> fn) {
  auto done = std::make_shared<std::promise<void>>();
  std::future<void> finished = done->get_future();
  std::thread([fn = std::move(fn), done] {
    try {
      fn();
      done->set_value();
    } catch (...) {
      done->set_exception(std::current_exception());
    }
  }).detach();
  if (finished.wait_for(limit) != std::future_status::ready) return false;
  finished.get();  // rethrows a failed assertion's exception, if any
  return true;
}

// Process CPU time (user + system, all threads) in seconds.
double process_cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + t.tv_usec * 1e-6; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

TEST(StreamTest, TasksOnOneStreamRunInSubmissionOrder) {
  Stream stream("compute");
  std::vector<int> order;  // only the worker touches it until synchronize()
  for (int i = 0; i < 1000; ++i)
    stream.submit("append " + std::to_string(i), [&order, i] { order.push_back(i); });
  stream.synchronize();
  ASSERT_EQ(order.size(), 1000u);
  for (int i = 0; i < 1000; ++i) ASSERT_EQ(order[i], i);
}

TEST(StreamTest, EventOrdersWorkAcrossStreams) {
  Stream producer("comm");
  Stream consumer("compute");
  int value = 0;  // plain int: the event edge alone must order the write before the read
  int seen = -1;
  Event written;
  producer.submit("slow write", [&] {
    std::this_thread::sleep_for(20ms);
    value = 42;
  });
  producer.record(written);
  consumer.wait(written);
  consumer.submit("read", [&] { seen = value; });
  consumer.synchronize();
  EXPECT_EQ(seen, 42);
  EXPECT_TRUE(written.query());
  producer.synchronize();
}

TEST(StreamTest, WaitDoesNotBlockTheCaller) {
  Stream producer("comm");
  Stream consumer("compute");
  std::promise<void> gate;
  std::shared_future<void> opened = gate.get_future().share();
  Event event;
  producer.submit("blocked", [opened] { opened.wait(); });
  producer.record(event);
  auto start = std::chrono::steady_clock::now();
  consumer.wait(event);
  consumer.submit("after", [] {});
  EXPECT_LT(std::chrono::steady_clock::now() - start, 1s);  // returned although the event is pending
  EXPECT_FALSE(event.query());
  gate.set_value();
  synchronize_all({&consumer, &producer});
  EXPECT_TRUE(event.query());
}

TEST(StreamTest, EventNeverRecordedIsCompleteAndWaitingOnItIsANoOp) {
  Event event;
  EXPECT_TRUE(event.query());
  event.synchronize();
  Stream stream("compute");
  bool ran = false;
  stream.wait(event);
  stream.submit("task", [&] { ran = true; });
  stream.synchronize();
  EXPECT_TRUE(ran);
}

TEST(StreamTest, HostEventSynchronizeWaitsForTheRecordedPoint) {
  Stream stream("comm");
  std::atomic<bool> done{false};
  Event event;
  stream.submit("slow", [&] {
    std::this_thread::sleep_for(20ms);
    done = true;
  });
  stream.record(event);
  event.synchronize();
  EXPECT_TRUE(done);
  EXPECT_TRUE(event.query());
}

TEST(StreamTest, WaitRefersToTheLatestRecordBeforeIt_NotALaterReRecord) {
  Stream producer("comm");
  Stream consumer("compute");
  std::promise<void> second_gate;
  std::shared_future<void> second_open = second_gate.get_future().share();
  Event event;
  producer.submit("first", [] {});
  producer.record(event);
  consumer.wait(event);  // refers to the first record
  std::atomic<bool> consumer_ran{false};
  consumer.submit("consume", [&] { consumer_ran = true; });
  producer.submit("second (blocked)", [second_open] { second_open.wait(); });
  producer.record(event);  // re-record: the event is pending again
  consumer.synchronize();  // must not wait for the second record
  EXPECT_TRUE(consumer_ran);
  EXPECT_FALSE(event.query());
  second_gate.set_value();
  event.synchronize();
  EXPECT_TRUE(event.query());
  producer.synchronize();
}

TEST(StreamTest, SynchronizeRethrowsTaskExceptionNamingStreamAndTask) {
  Stream stream("comm");
  stream.submit("a2a dispatch c1", [] { throw std::runtime_error("peer vanished"); });
  std::string message = error_of([&] { stream.synchronize(); });
  EXPECT_NE(message.find("peer vanished"), std::string::npos) << message;
  EXPECT_NE(message.find("'comm'"), std::string::npos) << message;
  EXPECT_NE(message.find("'a2a dispatch c1'"), std::string::npos) << message;
  EXPECT_TRUE(stream.failed());
}

TEST(StreamTest, NonStandardExceptionIsReportedToo) {
  Stream stream("compute");
  stream.submit("throws int", [] { throw 7; });
  std::string message = error_of([&] { stream.synchronize(); });
  EXPECT_NE(message.find("'throws int'"), std::string::npos) << message;
}

TEST(StreamTest, TasksAfterAFailureAreSkippedAndTheErrorIsSticky) {
  Stream stream("compute");
  bool later_ran = false;
  stream.submit("ok", [] {});
  stream.submit("bad", [] { throw std::runtime_error("first failure"); });
  stream.submit("later", [&] { later_ran = true; });
  stream.submit("also bad", [] { throw std::runtime_error("second failure"); });
  std::string message = error_of([&] { stream.synchronize(); });
  EXPECT_NE(message.find("first failure"), std::string::npos) << message;
  EXPECT_FALSE(later_ran);
  stream.submit("after report", [&] { later_ran = true; });  // enqueueing does not throw
  std::string again = error_of([&] { stream.synchronize(); });
  EXPECT_EQ(again, message);
  EXPECT_FALSE(later_ran);
}

TEST(StreamTest, EventsRecordedBeforeAFailureCompleteNormally_AfterItErrored) {
  bool finished = finishes_within(5000ms, [] {
    Stream stream("comm");
    Event before, after;
    stream.submit("ok", [] {});
    stream.record(before);
    stream.submit("bad", [] { throw std::runtime_error("boom"); });
    stream.record(after);
    before.synchronize();  // does not throw
    std::string message = error_of([&] { after.synchronize(); });
    EXPECT_NE(message.find("boom"), std::string::npos) << message;
    EXPECT_TRUE(after.query());
    EXPECT_THROW(stream.synchronize(), Error);
  });
  EXPECT_TRUE(finished) << "an event recorded after a failure never completed";
}

// The stream B waits on an event that stream A records after a failing task: B must skip its work
// and report A's error, not block forever.
TEST(StreamTest, FailureOnOneStreamStopsTheStreamWaitingOnItInsteadOfHanging) {
  bool finished = finishes_within(5000ms, [] {
    Stream a("comm");
    Stream b("compute");
    auto b_ran = std::make_shared<std::atomic<bool>>(false);
    Event event;
    a.submit("a2a dispatch c0", [] {
      std::this_thread::sleep_for(30ms);  // b is already blocked in its wait when this throws
      throw std::runtime_error("boom");
    });
    a.record(event);
    b.wait(event);
    b.submit("experts c0", [b_ran] { *b_ran = true; });
    std::string b_message = error_of([&] { b.synchronize(); });
    EXPECT_NE(b_message.find("boom"), std::string::npos) << b_message;
    EXPECT_NE(b_message.find("'a2a dispatch c0'"), std::string::npos) << b_message;
    EXPECT_NE(b_message.find("'compute'"), std::string::npos) << b_message;
    EXPECT_FALSE(*b_ran);
    EXPECT_TRUE(b.failed());
    std::string a_message = error_of([&] { a.synchronize(); });
    EXPECT_NE(a_message.find("boom"), std::string::npos) << a_message;
  });
  EXPECT_TRUE(finished) << "a stream waiting on a failed stream's event hung";
}

TEST(StreamTest, SynchronizeAllWaitsForEveryStreamAndReportsTheRootCause) {
  bool finished = finishes_within(5000ms, [] {
    Stream compute("compute");
    Stream comm("comm");
    auto tail_ran = std::make_shared<std::atomic<bool>>(false);
    Event event;
    comm.submit("bad", [] { throw std::runtime_error("root cause"); });
    comm.record(event);
    compute.wait(event);
    compute.submit("skipped", [] {});
    Stream other("other");
    other.submit("slow tail", [tail_ran] {
      std::this_thread::sleep_for(20ms);
      *tail_ran = true;
    });
    std::string message = error_of([&] { synchronize_all({&compute, nullptr, &other, &comm}); });
    EXPECT_EQ(message.rfind("stream 'comm' task 'bad' failed: root cause", 0), 0u) << message;
    EXPECT_TRUE(*tail_ran);  // waited for the healthy stream too
  });
  EXPECT_TRUE(finished);
}

TEST(StreamTest, SynchronizeFromInsideOwnTaskIsAnErrorNotADeadlock) {
  bool finished = finishes_within(5000ms, [] {
    Stream stream("compute");
    stream.submit("self sync", [&stream] { stream.synchronize(); });
    std::string message = error_of([&] { stream.synchronize(); });
    EXPECT_NE(message.find("its own tasks"), std::string::npos) << message;
  });
  EXPECT_TRUE(finished);
}

TEST(StreamTest, DestructorRunsPendingWork) {
  std::atomic<int> ran{0};
  {
    Stream stream("compute");
    for (int i = 0; i < 10; ++i) {
      stream.submit("sleep", [&ran] {
        std::this_thread::sleep_for(2ms);
        ++ran;
      });
    }
  }
  EXPECT_EQ(ran, 10);
}

TEST(StreamTest, TaskCapturesAreReleasedBeforeSynchronizeReturns) {
  Stream stream("compute");
  auto payload = std::make_shared<int>(1);
  std::weak_ptr<int> watch = payload;
  stream.submit("hold", [payload = std::move(payload)] { (void)*payload; });
  stream.synchronize();
  EXPECT_TRUE(watch.expired());
}

// A stream blocked in a wait, and a host blocked in synchronize(), must sleep: the process burns
// far less CPU than wall time.
TEST(StreamTest, WaitingStreamDoesNotSpin) {
  Stream producer("comm");
  Stream consumer("compute");
  Event event;
  const double cpu_before = process_cpu_seconds();
  const auto wall_before = std::chrono::steady_clock::now();
  producer.submit("sleep 200 ms", [] { std::this_thread::sleep_for(200ms); });
  producer.record(event);
  consumer.wait(event);
  consumer.submit("after", [] {});
  consumer.synchronize();
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall_before).count();
  const double cpu = process_cpu_seconds() - cpu_before;
  EXPECT_GE(wall, 0.19);
  EXPECT_LT(cpu, 0.1 * wall) << "cpu " << cpu << " s over " << wall << " s of wall time";
  producer.synchronize();
}

TEST(StreamTest, AttachedRecorderGetsOneSlicePerTaskOnTheStreamsTrack) {
  TraceRecorder trace;
  {
    Stream compute("compute", &trace, 3);
    Stream comm("comm", &trace, 3);
    Event event;
    compute.submit("attn fwd c0", [] { std::this_thread::sleep_for(5ms); });
    compute.record(event);
    comm.wait(event);
    comm.submit("a2a dispatch c0", [] { std::this_thread::sleep_for(5ms); });
    comm.submit("fails", [] { throw std::runtime_error("boom"); });
    comm.submit("skipped", [] {});
    EXPECT_THROW(synchronize_all({&compute, &comm}), Error);
  }
  std::vector<TraceSlice> slices = trace.slices();
  ASSERT_EQ(slices.size(), 3u);  // the skipped task leaves no slice
  EXPECT_EQ(slices[0].name, "attn fwd c0");
  EXPECT_EQ(slices[0].track, "compute");
  EXPECT_EQ(slices[0].rank, 3);
  EXPECT_GE(slices[0].duration_us, 4000);
  EXPECT_EQ(slices[1].name, "a2a dispatch c0");
  EXPECT_EQ(slices[1].track, "comm");
  // The event edge shows in the picture: the comm slice starts after the compute slice ends.
  EXPECT_GE(slices[1].start_us, slices[0].start_us + slices[0].duration_us);
  EXPECT_EQ(slices[2].name, "fails");
  ASSERT_EQ(slices[2].args.size(), 1u);
  EXPECT_EQ(slices[2].args[0].first, "error");
  EXPECT_NE(std::get<std::string>(slices[2].args[0].second).find("boom"), std::string::npos);
}

}  // namespace
}  // namespace ampipe

// A stream's worker runs kernels with the process's thread count, not OpenMP's per-thread default.
TEST(Stream, WorkersUseTheProcessThreadCount) {
  const int before = ampipe::num_threads();
  for (int n : {1, 3}) {
    ampipe::set_num_threads(n);
    ampipe::Stream s("compute");
    int seen = 0;
    s.submit("probe", [&] { seen = omp_get_max_threads(); });
    s.synchronize();
    EXPECT_EQ(seen, n);
  }
  ampipe::set_num_threads(before);
}

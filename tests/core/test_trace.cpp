// TraceRecorder: Chrome trace JSON with the events, fields and metadata Perfetto needs; thread-safe
// recording; merging ranks' traces; atomic writes.
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"
#include "core/trace.h"

namespace ampipe {
namespace {

using nlohmann::json;

TraceSlice slice(int rank, std::string track, std::string name, double start_us, double duration_us) {
  TraceSlice s;
  s.rank = rank;
  s.track = std::move(track);
  s.name = std::move(name);
  s.start_us = start_us;
  s.duration_us = duration_us;
  return s;
}

std::vector<json> events_with_phase(const json& trace, const std::string& phase) {
  std::vector<json> out;
  for (const json& e : trace.at("traceEvents")) {
    if (e.at("ph") == phase) out.push_back(e);
  }
  return out;
}

// The "args.name" of the metadata event `what` for (pid, tid).
std::string metadata_name(const json& trace, const std::string& what, int pid, int tid) {
  for (const json& e : events_with_phase(trace, "M")) {
    if (e.at("name") == what && e.at("pid") == pid && e.at("tid") == tid) return e.at("args").at("name");
  }
  return "<missing>";
}

TEST(TraceTest, ClockIsMonotonicMicroseconds) {
  double a = trace_clock_us();
  std::this_thread::sleep_for(std::chrono::milliseconds(10));
  double b = trace_clock_us();
  EXPECT_GE(a, 0.0);
  EXPECT_GE(b - a, 9000.0);
  EXPECT_LT(b - a, 1e6);
}

TEST(TraceTest, JsonHasCompleteEventsWithFieldsAndProcessAndThreadNames) {
  TraceRecorder trace;
  trace.declare_track(0, "compute");
  trace.declare_track(0, "comm");
  TraceSlice s = slice(0, "comm", "a2a dispatch c1", 1500.25, 320.5);
  s.args = {{"bytes", int64_t{4096}}, {"ratio", 0.5}, {"peer", std::string("rank 1")}};
  trace.add_slice(s);
  trace.add_slice(slice(0, "compute", "attn fwd c2", 1000.0, 400.0));

  json j = json::parse(trace.to_json());
  ASSERT_TRUE(j.at("traceEvents").is_array());
  std::vector<json> complete = events_with_phase(j, "X");
  ASSERT_EQ(complete.size(), 2u);
  // Sorted by track (declaration order), so compute (tid 1) comes first.
  EXPECT_EQ(complete[0].at("name"), "attn fwd c2");
  EXPECT_EQ(complete[0].at("pid"), 0);
  EXPECT_EQ(complete[0].at("tid"), 1);
  EXPECT_DOUBLE_EQ(complete[0].at("ts").get<double>(), 1000.0);
  EXPECT_DOUBLE_EQ(complete[0].at("dur").get<double>(), 400.0);
  EXPECT_FALSE(complete[0].contains("args"));
  EXPECT_EQ(complete[1].at("name"), "a2a dispatch c1");
  EXPECT_EQ(complete[1].at("tid"), 2);
  EXPECT_DOUBLE_EQ(complete[1].at("ts").get<double>(), 1500.25);
  EXPECT_DOUBLE_EQ(complete[1].at("dur").get<double>(), 320.5);
  EXPECT_EQ(complete[1].at("args").at("bytes"), 4096);
  EXPECT_DOUBLE_EQ(complete[1].at("args").at("ratio").get<double>(), 0.5);
  EXPECT_EQ(complete[1].at("args").at("peer"), "rank 1");

  EXPECT_EQ(metadata_name(j, "process_name", 0, 0), "rank 0");
  EXPECT_EQ(metadata_name(j, "thread_name", 0, 1), "compute");
  EXPECT_EQ(metadata_name(j, "thread_name", 0, 2), "comm");
  std::set<std::string> sort_events;
  for (const json& e : events_with_phase(j, "M")) sort_events.insert(e.at("name").get<std::string>());
  EXPECT_TRUE(sort_events.count("process_sort_index"));
  EXPECT_TRUE(sort_events.count("thread_sort_index"));
}

TEST(TraceTest, DeclaredTrackWithoutSlicesIsStillNamed) {
  TraceRecorder trace;
  trace.declare_track(2, "comm");
  json j = json::parse(trace.to_json());
  EXPECT_EQ(metadata_name(j, "process_name", 2, 0), "rank 2");
  EXPECT_EQ(metadata_name(j, "thread_name", 2, 1), "comm");
  EXPECT_TRUE(events_with_phase(j, "X").empty());
}

TEST(TraceTest, OriginShiftsTimestamps) {
  TraceRecorder trace;
  trace.add_slice(slice(0, "compute", "a", 5000.0, 10.0));
  trace.set_origin_us(4000.0);
  json j = json::parse(trace.to_json());
  EXPECT_DOUBLE_EQ(events_with_phase(j, "X").at(0).at("ts").get<double>(), 1000.0);
}

TEST(TraceTest, NamesThatAreNotUtf8OrNeedEscapingStillGiveValidJson) {
  TraceRecorder trace;
  trace.add_slice(slice(0, "com\"m", "bad \xff byte \\ \n", 0.0, 1.0));
  json j = json::parse(trace.to_json());
  std::vector<json> complete = events_with_phase(j, "X");
  ASSERT_EQ(complete.size(), 1u);
  EXPECT_NE(complete[0].at("name").get<std::string>().find("bad "), std::string::npos);
  EXPECT_EQ(metadata_name(j, "thread_name", 0, 1), "com\"m");
}

TEST(TraceTest, SlicesAddedFromManyThreadsAreAllPresent) {
  TraceRecorder trace;
  constexpr int kThreads = 8;
  constexpr int kPerThread = 500;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&trace, t] {
      for (int i = 0; i < kPerThread; ++i) {
        trace.add_slice(slice(t % 2, "track " + std::to_string(t),
                              std::to_string(t) + "/" + std::to_string(i), trace_clock_us(), 1.0));
      }
    });
  }
  for (auto& thread : threads) thread.join();
  EXPECT_EQ(trace.num_slices(), static_cast<size_t>(kThreads * kPerThread));
  json j = json::parse(trace.to_json());
  std::set<std::string> names;
  for (const json& e : events_with_phase(j, "X")) names.insert(e.at("name").get<std::string>());
  ASSERT_EQ(names.size(), static_cast<size_t>(kThreads * kPerThread));
  for (int t = 0; t < kThreads; ++t) {
    for (int i = 0; i < kPerThread; ++i) {
      ASSERT_TRUE(names.count(std::to_string(t) + "/" + std::to_string(i))) << t << "/" << i;
    }
  }
  // Every (rank, track) got its own tid and a name.
  std::map<std::pair<int, int>, std::string> tracks;
  for (const json& e : events_with_phase(j, "M")) {
    if (e.at("name") == "thread_name") tracks[{e.at("pid"), e.at("tid")}] = e.at("args").at("name");
  }
  EXPECT_EQ(tracks.size(), static_cast<size_t>(kThreads));
}

TEST(TraceTest, MergeKeepsEveryRanksEventsAndNames) {
  std::vector<std::string> per_rank;
  for (int rank = 0; rank < 3; ++rank) {
    TraceRecorder trace;
    trace.declare_track(rank, "compute");
    trace.declare_track(rank, "comm");
    trace.add_slice(slice(rank, "compute", "attn fwd c0", 10.0 * rank, 5.0));
    trace.add_slice(slice(rank, "comm", "a2a dispatch c0", 10.0 * rank + 5.0, 5.0));
    per_rank.push_back(trace.to_json());
  }
  json merged = json::parse(TraceRecorder::merge(per_rank));
  std::vector<json> complete = events_with_phase(merged, "X");
  ASSERT_EQ(complete.size(), 6u);
  std::map<int, int> per_pid;
  for (const json& e : complete) ++per_pid[e.at("pid").get<int>()];
  EXPECT_EQ(per_pid, (std::map<int, int>{{0, 2}, {1, 2}, {2, 2}}));
  for (int rank = 0; rank < 3; ++rank) {
    EXPECT_EQ(metadata_name(merged, "process_name", rank, 0), "rank " + std::to_string(rank));
    EXPECT_EQ(metadata_name(merged, "thread_name", rank, 1), "compute");
    EXPECT_EQ(metadata_name(merged, "thread_name", rank, 2), "comm");
  }
}

TEST(TraceTest, MergeKeepsIdenticalMetadataOnceAndAcceptsTheArrayForm) {
  TraceRecorder trace;
  trace.add_slice(slice(0, "compute", "a", 0.0, 1.0));
  std::string one = trace.to_json();
  std::string bare_array = json::parse(one).at("traceEvents").dump();
  json merged = json::parse(TraceRecorder::merge({one, bare_array}));
  EXPECT_EQ(events_with_phase(merged, "X").size(), 2u);
  EXPECT_EQ(events_with_phase(merged, "M").size(), events_with_phase(json::parse(one), "M").size());
}

TEST(TraceTest, MergeRejectsInputThatIsNotATraceNamingIt) {
  TraceRecorder trace;
  std::string good = trace.to_json();
  try {
    TraceRecorder::merge({good, "{not json"});
    ADD_FAILURE() << "expected an ampipe::Error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("trace 1 of 2"), std::string::npos) << e.what();
  }
  EXPECT_THROW(TraceRecorder::merge({R"({"events": []})"}), Error);
}

TEST(TraceTest, WriteCommitsTheJsonAtomically) {
  std::string dir = ::testing::TempDir() + "ampipe_trace_XXXXXX";
  ASSERT_NE(::mkdtemp(dir.data()), nullptr) << std::strerror(errno);
  const std::string path = dir + "/trace.json";
  TraceRecorder trace;
  trace.add_slice(slice(1, "comm", "a2a combine c3", 42.0, 7.0));
  trace.write(path);
  EXPECT_EQ(read_file(path), trace.to_json());
  EXPECT_EQ(std::distance(std::filesystem::directory_iterator(dir), std::filesystem::directory_iterator()),
            1);
  EXPECT_THROW(trace.write(dir + "/missing/trace.json"), Error);
  std::filesystem::remove_all(dir);
}

TEST(TraceTest, ScopeRecordsOneSliceAndNullRecorderIsANoOp) {
  TraceRecorder trace;
  {
    TraceScope scope(&trace, 0, "host", "optimizer step");
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  { TraceScope nothing(nullptr, 0, "host", "ignored"); }
  std::vector<TraceSlice> slices = trace.slices();
  ASSERT_EQ(slices.size(), 1u);
  EXPECT_EQ(slices[0].name, "optimizer step");
  EXPECT_GE(slices[0].duration_us, 1500.0);
}

TEST(TraceTest, ClearDropsSlicesButKeepsTracks) {
  TraceRecorder trace;
  trace.add_slice(slice(0, "compute", "a", 0.0, 1.0));
  trace.clear();
  EXPECT_EQ(trace.num_slices(), 0u);
  json j = json::parse(trace.to_json());
  EXPECT_EQ(metadata_name(j, "thread_name", 0, 1), "compute");
}

}  // namespace
}  // namespace ampipe

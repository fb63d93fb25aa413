#include "core/trace.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "core/atomic_file.h"
#include "core/error.h"

namespace ampipe {

namespace {

using nlohmann::json;

std::chrono::steady_clock::time_point process_epoch() {
  static const std::chrono::steady_clock::time_point epoch = std::chrono::steady_clock::now();
  return epoch;
}
// Fixes the epoch at program start rather than at the first slice.
[[maybe_unused]] const auto kEpochAtStartup = process_epoch();

// Microseconds rounded to nanoseconds, so the JSON stays short ("1234.567").
double round_us(double us) { return std::round(us * 1000.0) / 1000.0; }

// Dumps JSON, replacing bytes that are not valid UTF-8 instead of throwing.
std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

json to_json_value(const TraceArg& arg) {
  return std::visit([](const auto& v) { return json(v); }, arg);
}

}  // namespace

double trace_clock_us() {
  return std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - process_epoch())
      .count();
}

void TraceRecorder::declare_track_locked(int rank, const std::string& track) {
  for (const Track& t : tracks_) {
    if (t.rank == rank && t.name == track) return;
  }
  tracks_.push_back(Track{rank, track});
}

void TraceRecorder::add_slice(TraceSlice slice) {
  std::lock_guard<std::mutex> lock(mutex_);
  declare_track_locked(slice.rank, slice.track);
  slices_.push_back(std::move(slice));
}

void TraceRecorder::declare_track(int rank, const std::string& track) {
  std::lock_guard<std::mutex> lock(mutex_);
  declare_track_locked(rank, track);
}

void TraceRecorder::set_origin_us(double origin_us) {
  std::lock_guard<std::mutex> lock(mutex_);
  origin_us_ = origin_us;
}

void TraceRecorder::mark_origin() { set_origin_us(trace_clock_us()); }

size_t TraceRecorder::num_slices() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return slices_.size();
}

std::vector<TraceSlice> TraceRecorder::slices() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return slices_;
}

void TraceRecorder::clear() {
  std::lock_guard<std::mutex> lock(mutex_);
  slices_.clear();
}

std::string TraceRecorder::to_json() const {
  std::vector<TraceSlice> slices;
  std::vector<Track> tracks;
  double origin_us = 0;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    slices = slices_;
    tracks = tracks_;
    origin_us = origin_us_;
  }

  // tid of each (rank, track): 1, 2, ... in declaration order within the rank.
  std::map<std::pair<int, std::string>, int> tid;
  std::map<int, int> tracks_of_rank;
  for (const Track& t : tracks) tid[{t.rank, t.name}] = ++tracks_of_rank[t.rank];

  json events = json::array();
  for (const auto& [rank, count] : tracks_of_rank) {
    (void)count;
    events.push_back({{"name", "process_name"},
                      {"ph", "M"},
                      {"pid", rank},
                      {"tid", 0},
                      {"args", {{"name", "rank " + std::to_string(rank)}}}});
    events.push_back({{"name", "process_sort_index"},
                      {"ph", "M"},
                      {"pid", rank},
                      {"tid", 0},
                      {"args", {{"sort_index", rank}}}});
  }
  for (const Track& t : tracks) {
    int id = tid.at({t.rank, t.name});
    events.push_back(
        {{"name", "thread_name"}, {"ph", "M"}, {"pid", t.rank}, {"tid", id}, {"args", {{"name", t.name}}}});
    events.push_back({{"name", "thread_sort_index"},
                      {"ph", "M"},
                      {"pid", t.rank},
                      {"tid", id},
                      {"args", {{"sort_index", id}}}});
  }

  std::vector<std::pair<int, const TraceSlice*>> order;  // (tid, slice)
  order.reserve(slices.size());
  for (const TraceSlice& s : slices) order.emplace_back(tid.at({s.rank, s.track}), &s);
  std::stable_sort(order.begin(), order.end(), [](const auto& a, const auto& b) {
    if (a.second->rank != b.second->rank) return a.second->rank < b.second->rank;
    if (a.first != b.first) return a.first < b.first;
    return a.second->start_us < b.second->start_us;
  });
  for (const auto& [id, s] : order) {
    json event = {{"name", s->name},
                  {"ph", "X"},
                  {"pid", s->rank},
                  {"tid", id},
                  {"ts", round_us(s->start_us - origin_us)},
                  {"dur", round_us(std::max(0.0, s->duration_us))}};
    if (!s->args.empty()) {
      json args = json::object();
      for (const auto& [key, value] : s->args) args[key] = to_json_value(value);
      event["args"] = std::move(args);
    }
    events.push_back(std::move(event));
  }
  return dump(json{{"traceEvents", std::move(events)}, {"displayTimeUnit", "ms"}});
}

void TraceRecorder::write(const std::string& path) const { write_file_atomically(path, to_json()); }

std::string TraceRecorder::merge(const std::vector<std::string>& traces) {
  json metadata = json::array();
  json others = json::array();
  std::set<std::string> seen_metadata;
  for (size_t i = 0; i < traces.size(); ++i) {
    const std::string where = "trace " + std::to_string(i) + " of " + std::to_string(traces.size());
    json trace;
    try {
      trace = json::parse(traces[i]);
    } catch (const json::parse_error& e) {
      throw Error("cannot merge traces: " + where + " is not valid JSON: " + e.what());
    }
    const json* events = nullptr;
    if (trace.is_array()) {
      events = &trace;
    } else if (trace.is_object() && trace.contains("traceEvents") && trace["traceEvents"].is_array()) {
      events = &trace["traceEvents"];
    } else {
      throw Error("cannot merge traces: " + where +
                  " is not a Chrome trace (expected an object with a \"traceEvents\" array, or an array)");
    }
    for (const json& event : *events) {
      if (event.is_object() && event.contains("ph") && event["ph"] == "M") {
        if (seen_metadata.insert(dump(event)).second) metadata.push_back(event);
      } else {
        others.push_back(event);
      }
    }
  }
  for (json& event : others) metadata.push_back(std::move(event));
  return dump(json{{"traceEvents", std::move(metadata)}, {"displayTimeUnit", "ms"}});
}

TraceScope::TraceScope(TraceRecorder* recorder, int rank, std::string track, std::string name)
    : recorder_(recorder) {
  if (recorder_ == nullptr) return;
  slice_.rank = rank;
  slice_.track = std::move(track);
  slice_.name = std::move(name);
  slice_.start_us = trace_clock_us();
}

TraceScope::~TraceScope() {
  if (recorder_ == nullptr) return;
  slice_.duration_us = trace_clock_us() - slice_.start_us;
  try {
    recorder_->add_slice(std::move(slice_));
  } catch (...) {
    // Out of memory while tracing: lose the slice rather than terminate in a destructor.
  }
}

}  // namespace ampipe

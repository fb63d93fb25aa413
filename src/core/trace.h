// TraceRecorder: collects timed slices and writes them as a Chrome trace (JSON) that loads in
// Perfetto (ui.perfetto.dev) and chrome://tracing.
//
// Layout of the picture: one process per rank (Chrome "pid" = rank, named "rank R"), one thread
// track per stream of that rank (named by the slice's `track`, e.g. "compute", "comm"), one "X"
// (complete) event per slice. Tracks of a rank are listed in the order they were first declared or
// used; ranks in rank order.
//
// Time: slices carry microseconds on trace_clock_us(), a steady clock whose zero is a process-wide
// epoch. Each rank has its own epoch, so before merging ranks' traces align them: after a barrier
// every rank calls mark_origin(), and timestamps are written relative to that moment (slices that
// started earlier get negative timestamps).
//
// Merging: every rank serialises its own recorder with to_json(); rank 0 gathers the strings (the
// gather is the caller's business, e.g. over Communicator) and writes merge(strings).
//
// Thread-safety: add_slice, declare_track and every const method may be called from any thread at
// once (one mutex). A recorder must outlive every Stream / TraceScope that records into it.
#pragma once

#include <cstdint>
#include <mutex>
#include <string>
#include <utility>
#include <variant>
#include <vector>

namespace ampipe {

// Microseconds since a process-wide epoch (the first call in the process), on std::steady_clock:
// monotonic, thread-safe, sub-microsecond resolution.
double trace_clock_us();

// A value shown in a slice's details pane.
using TraceArg = std::variant<int64_t, double, std::string>;

struct TraceSlice {
  int rank = 0;         // Chrome pid; the process is named "rank <rank>"
  std::string track;    // Chrome thread name within the rank, e.g. "compute", "comm"
  std::string name;     // e.g. "attn fwd c2"
  double start_us = 0;  // on trace_clock_us()
  double duration_us = 0;
  std::vector<std::pair<std::string, TraceArg>> args;
};

class TraceRecorder {
 public:
  TraceRecorder() = default;
  TraceRecorder(const TraceRecorder&) = delete;
  TraceRecorder& operator=(const TraceRecorder&) = delete;

  void add_slice(TraceSlice slice);
  // Creates the track (if new) so that it is listed in this order even before it has slices, or
  // if it never gets any. Using a track in add_slice declares it too.
  void declare_track(int rank, const std::string& track);

  // Timestamps are written relative to this point of trace_clock_us() (default 0, the process
  // epoch). mark_origin() sets it to now.
  void set_origin_us(double origin_us);
  void mark_origin();

  size_t num_slices() const;
  // A copy of the slices recorded so far, in the order they were added.
  std::vector<TraceSlice> slices() const;
  void clear();  // drops the slices; keeps tracks and origin

  // {"traceEvents": [...], "displayTimeUnit": "ms"}: "M" metadata events naming and ordering the
  // processes and threads, then the "X" events sorted by rank, track and start. Strings that are
  // not valid UTF-8 are written with U+FFFD in place of the bad bytes.
  std::string to_json() const;
  // Writes to_json() to `path` atomically (core/atomic_file.h); throws ampipe::Error on failure.
  void write(const std::string& path) const;

  // One trace holding every event of `traces` (each a to_json() result, or any Chrome trace in
  // object or bare-array form); identical metadata events are kept once. Throws ampipe::Error
  // naming the input's index if one is not a Chrome trace.
  static std::string merge(const std::vector<std::string>& traces);

 private:
  struct Track {
    int rank;
    std::string name;
  };
  // Adds (rank, track) to tracks_ if new; caller holds mutex_.
  void declare_track_locked(int rank, const std::string& track);

  mutable std::mutex mutex_;
  std::vector<TraceSlice> slices_;
  std::vector<Track> tracks_;  // declaration order; tid = 1 + index among the same rank's tracks
  double origin_us_ = 0;
};

// Records one slice from construction to destruction (host-side code outside a Stream). A null
// recorder makes it a no-op.
class TraceScope {
 public:
  TraceScope(TraceRecorder* recorder, int rank, std::string track, std::string name);
  ~TraceScope();
  TraceScope(const TraceScope&) = delete;
  TraceScope& operator=(const TraceScope&) = delete;

 private:
  TraceRecorder* recorder_;
  TraceSlice slice_;
};

}  // namespace ampipe

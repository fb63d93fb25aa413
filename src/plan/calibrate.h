// Calibration: a HardwareProfile (plan/profile.h) measured on this machine with the engine's own
// kernels, communicator and streams, so that the planner can price a schedule for the machine it is
// about to run on.
//
// What is measured. Every rank runs every measurement at the same time (each sample starts after a
// barrier and counts the slowest rank's time), so ranks that share the machine's cores and memory
// load each other as in training; rank 0's figures are kept:
//   matrix_flops        sgemm (kernels/gemm.h) at block shapes: [T,d] x [d,4d] for every d in
//                       hidden_sizes (full mode also [T,4d] x [4d,d], and more T); the median over
//                       shapes of 2*M*N*K / median time.
//   matrix_flops_bf16   full mode only: the same shapes with bf16 operands (float32 accumulation,
//                       kernels/gemm.h's bf16 path, as --bf16 runs); the quick mode leaves it 0.
//   attention_*efficiency  causal attention forward / backward (kernels/attention.h), d = 512,
//                       8 heads, B = 1, N = 1024 (full: also 2048), q/k/v column slices of a fused
//                       [N,3d] buffer; FLOPs counted as in bench/bench_attention.cpp: forward
//                       2*N^2*d (the causal half of QK^T and PV), backward 2.5x that; divided by
//                       the GEMM rate above. Clamped to the profile's (0, 1.5].
//   memory_bandwidth    the median over three elementwise passes over tensors of a few tens of MB:
//                       y += x (kernels::add_inplace), layernorm forward, and a row gather
//                       (kernels::gather_rows, the permute); bytes = bytes read + bytes written.
//   cache_bytes         the largest data cache of CPU 0 (/sys/devices/system/cpu/cpu0/cache, else
//                       sysconf), a cache shared by several CPUs divided by the world size (all ranks
//                       are assumed to share this machine); 0 (no cache modelled) if unknown.
//   cache_bandwidth     the same three passes, back to back, over two tensors that together fill a
//                       quarter of cache_bytes (so they stay in the cache).
//   intra/inter_node    with more than one rank: the dispatcher's exchange (an all_to_all of one
//                       count per rank, then all_to_all_v) at three message sizes, every rank
//                       sending at once; time = latency + remote bytes per rank / bandwidth, the
//                       bandwidth from a least-squares slope (a link that the ranks share counts
//                       once per rank), the latency from the smallest message (kept within half to
//                       all of its time) and halved, as the profile's latency is per collective call
//                       and an exchange makes two. One machine: intra_node = inter_node,
//                       ranks_per_node = world size. With one rank nothing crosses a link: the
//                       link figures are options.single_rank_link, and `source` says so.
//   overlap_slowdown    GEMM time while another thread of this process runs back-to-back
//                       exchanges (as above; 1 MiB per rank quick, 4 MiB full, the size of a block's
//                       chunk exchange) on `world`, over GEMM time alone (>= 1; 1 with one rank).
//   comm_overlap_slowdown  in the same run, the exchanges' time beside the GEMMs over their time
//                       alone (>= 1, at most 1000; 1 with one rank). Over shared memory with a comm
//                       thread that yields its core this is large; over a rate-shaped link, small.
//   task_overhead       submitting an empty task on a Stream (core/stream.h), recording an Event
//                       after it and waiting for it on the host: the median round trip.
// bytes_per_element = 4 (float32). source = "ampipe plan --calibrate on HOST at DATE, N ranks,
// link LABEL; ..." with the mode, threads and assumptions.
//
// Collective over `world`: every rank calls it with the same options; every rank returns the same
// profile (rank 0's, broadcast as JSON). While it runs, nothing else may use `world` (an internal
// thread makes communicator calls during the overlap measurement). Sets the kernel thread count
// (kernels::set_kernel_threads) to options.threads for the measurements and restores the previous
// count before returning. Throws ampipe::Error on bad options (before any collective call).
// Duration: quick mode < ~2 s on a 2-core machine (used at start-up of `train` / `bench` with
// `--pipe-degree auto`), full mode < ~30 s.
#pragma once

#include <cstdint>
#include <ostream>
#include <string>
#include <vector>

#include "plan/profile.h"

namespace ampipe {

class Communicator;

struct CalibrateOptions {
  std::string name = "calibrated";  // the profile's name
  int threads = 0;                  // compute threads per rank; 0 = keep the current count
  bool quick = false;               // start-up mode: fewer shapes, fewer repeats, smaller messages
  // Hidden sizes d of the GEMM shapes (each >= 1). A caller that knows its model passes its d.
  std::vector<int64_t> hidden_sizes = {256, 512, 1024};
  // Label of the link in `source`; empty: $AMPIPE_LINK (set by scripts/netem.sh), else "unshaped".
  std::string link;
  // The link figures used with one rank, where nothing can be measured: fast and nearly free.
  LinkProfile single_rank_link = {100e9, 1e-6};
  // If set, rank 0 writes one human line per measurement here ("calibrate: ...").
  std::ostream* log = nullptr;
};

HardwareProfile calibrate(Communicator& world, const CalibrateOptions& options);

}  // namespace ampipe

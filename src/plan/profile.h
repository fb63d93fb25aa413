// Hardware profiles: what the planner's cost model needs to know of a machine (one rank = one GPU
// or one CPU process), read from JSON so that users can describe clusters they do not have.
//
// JSON fields (all required unless marked optional; rates must be finite and > 0):
//   name                   string
//   source                 string: where the figures come from (datasheet citation, or
//                          "ampipe plan --calibrate on HOST at DATE")
//   matrix_flops           FLOP/s one rank sustains in the block's GEMMs (float32)
//   matrix_flops_bf16      FLOP/s of the same GEMMs on bf16 operands with float32 accumulation
//                          (optional, default 0 = not known: --bf16 is priced at matrix_flops)
//   attention_efficiency   causal attention forward FLOP rate as a fraction of matrix_flops (0, 1.5]
//   attention_backward_efficiency  the same for attention backward (0, 1.5]
//   memory_bandwidth       bytes/s of one rank's elementwise stages (layernorm, permute, residual)
//   intra_node             {"bandwidth": bytes/s per rank, "latency": seconds}: all-to-all among
//                          ranks of one node
//   inter_node             {"bandwidth": bytes/s per rank, "latency": seconds}: across nodes
//   tensor_link            {"bandwidth": bytes/s per rank, "latency": seconds} (optional, default:
//                          intra_node): the link of a tensor-parallel group's collectives (all-reduce,
//                          all-gather, reduce-scatter; ring bandwidth per rank, one direction), inside
//                          a node
//   ranks_per_node         integer >= 1
//   bytes_per_element      integer >= 1: bytes of an activation element in the elementwise
//                          stages and of a float32 all-to-all element (4); a --bf16 model's
//                          all-to-alls are priced at 2 bytes an element whatever this says
//   task_overhead          seconds >= 0 (optional, default 0): fixed cost of each stage task
//   overlap_slowdown       >= 1 (optional, default 1): factor on compute-stage time while the
//                          comm stream is busy (CPU ranks share cores with the network stack)
//   comm_overlap_slowdown  >= 1 (optional, default 1): factor on comm-stage time while the compute
//                          stream is busy (a shared-memory transport needs CPU that the GEMMs hold:
//                          on a CPU rank whose comm thread yields its core, large; over a
//                          bandwidth-bound link, near 1)
//   cache_bytes            bytes >= 0 (optional, default 0 = no cache modelled): cache one rank's
//                          elementwise stages can keep their working set in (a shared cache's
//                          share per rank)
//   cache_bandwidth        bytes/s (optional; required and > 0 when cache_bytes > 0): rate of the
//                          elementwise stages when their working set fits in cache_bytes
//   collectives            "nccl" or "mpi" (optional, default "mpi"): the backend whose collectives
//                          the link figures model (--distributed-backend). "nccl": GPU buffers move
//                          between GPUs directly (NVLink, InfiniBand), no host copies; "mpi": host
//                          buffers over MPI (CPU ranks, or GPU ranks staging through host memory)
//   host_staging_bandwidth bytes/s >= 0 (optional, default 0 = no staging; "mpi" only): GPU ranks
//                          copy each all-to-all's buffers to the host and back at this rate (PCIe),
//                          before and after the link, so every all-to-all also pays
//                          2 x bytes / host_staging_bandwidth
// A bad profile is refused with a message naming the file and the field.
#pragma once

#include <cstdint>
#include <string>

namespace ampipe {

struct LinkProfile {
  double bandwidth = 0;  // bytes/s per rank, all ranks sending at once
  double latency = 0;    // seconds per collective call
};

struct HardwareProfile {
  std::string name, source;
  double matrix_flops = 0;
  double matrix_flops_bf16 = 0;  // 0: not known
  double attention_efficiency = 0;
  double attention_backward_efficiency = 0;
  double memory_bandwidth = 0;
  LinkProfile intra_node, inter_node;
  LinkProfile tensor_link;  // bandwidth 0: not given, intra_node
  int64_t ranks_per_node = 1;
  int64_t bytes_per_element = 4;
  double task_overhead = 0;
  double overlap_slowdown = 1;
  double comm_overlap_slowdown = 1;
  double cache_bytes = 0;
  double cache_bandwidth = 0;
  std::string collectives = "mpi";  // "nccl" or "mpi"
  double host_staging_bandwidth = 0;

  void validate(const std::string& where) const;  // throws ampipe::Error naming the bad field
  const LinkProfile& tensor_parallel_link() const {
    return tensor_link.bandwidth > 0 ? tensor_link : intra_node;
  }
};

// Parses and validates; `where` names the text in messages (a path).
HardwareProfile parse_profile(const std::string& json_text, const std::string& where);
HardwareProfile load_profile(const std::string& path);
// A profile by path, or by the name of one shipped under profiles/ ("h100-8gpu-400gbit"), looked up
// in $AMPIPE_PROFILES_DIR, then next to the binary (../profiles, profiles), then ./profiles.
HardwareProfile load_hardware_profile(const std::string& name_or_path);
std::string profile_to_json(const HardwareProfile& profile);  // pretty, round-trips through parse
// Writes atomically (core/atomic_file.h).
void save_profile(const HardwareProfile& profile, const std::string& path);

}  // namespace ampipe

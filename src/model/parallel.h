// How one model is laid out over ranks (docs/ARCHITECTURE.md, "Parallel layout").
//
// expert_group: the EP ranks that together hold all E experts of every MoE layer; rank i of the
// group holds experts [i * E/EP, (i+1) * E/EP). Tokens travel to their experts inside this group.
// data_group: every rank that trains on its own tokens (the world); routing statistics are summed
// over it so the load-balancing loss is one global loss, the same as one rank seeing all tokens.
// tensor_group: the T ranks of a tensor-parallel group (Megatron-LM's --tensor-model-parallel-size),
// which split each attention half's heads between them: rank t of the group holds query heads
// [t h/T, (t+1) h/T) and KV groups [t g/T, (t+1) g/T) (model/attention_layer.h, docs/MODEL.md
// "Tensor-parallel attention"). Every rank of the group sees the same tokens.
// expert_tensor_group: the ETP ranks of an expert-tensor-parallel group (Megatron-Core's
// --expert-tensor-parallel-size), which split each expert's FFN width f between them: rank e of the
// group holds columns [e f/ETP, (e+1) f/ETP) of the hidden layer (model/moe/experts.h). Without
// sequence parallelism ETP divides T, so the group lies inside a tensor group and sees the same tokens.
// sequence_parallel (Megatron-LM's --sequence-parallel; counts only with a tensor group of T > 1):
// the tensor group splits the residual stream, the norms, the router and the MoE layers by rows
// (model/sequence_parallel.h), each rank routing its own 1/T of the tokens; the attention and the
// LM head gather the rows they need. Without it every rank of a tensor group sees the same tokens.
// nullptr for any of them means "this rank alone". The communicators are borrowed, not owned.
#pragma once

#include "comm/communicator.h"
#include "core/device.h"

namespace ampipe {

struct ModelParallel {
  Communicator* expert_group = nullptr;
  Communicator* data_group = nullptr;
  Communicator* tensor_group = nullptr;
  Communicator* expert_tensor_group = nullptr;
  bool sequence_parallel = false;

  int ep_size() const { return expert_group ? expert_group->size() : 1; }
  int ep_rank() const { return expert_group ? expert_group->rank() : 0; }
  int data_size() const { return data_group ? data_group->size() : 1; }
  int tp_size() const { return tensor_group ? tensor_group->size() : 1; }
  int tp_rank() const { return tensor_group ? tensor_group->rank() : 0; }
  int etp_size() const { return expert_tensor_group ? expert_tensor_group->size() : 1; }
  bool sp() const { return sequence_parallel && tp_size() > 1; }  // the rows are split over the group
  int etp_rank() const { return expert_tensor_group ? expert_tensor_group->rank() : 0; }
};

// Refuses Device::CUDA when a communicator of the layout cannot move device buffers (ampipe::Error
// naming the backend and what to do): wrap a host-only one in HostStagedCommunicator
// (comm/host_staged_communicator.h), as the CLI does for --device cuda on several ranks.
void require_device_communicator(Device device, const Communicator* comm);
void require_device_communicators(Device device, const ModelParallel& parallel);

}  // namespace ampipe

// The emulated NCCL's operations as messages (docs/GPU.md, "The emulator"): point-to-point groups,
// and the collectives with NCCL's semantics. Reductions are deterministic: element i is reduced by
// one rank (its owner), over ranks 0..n-1 in that order, and the owner sends the result to the
// others, so every rank holds the same bits.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "nccl_internal.h"

namespace ampipe_gpu_emulator::nccl {
namespace {

// ---- Element types -------------------------------------------------------------------------------
// 16-bit floats are reduced in float and rounded back (to nearest even) after every step, as a
// GPU reducing in half precision does.
float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu;
  const uint32_t mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign != 0 ? -magnitude : magnitude;
  }
  const uint32_t bits = exponent == 31 ? sign | 0x7f800000u | (mantissa << 13)
                                       : sign | ((exponent + 112u) << 23) | (mantissa << 13);
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t float_to_half(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  const auto sign = static_cast<uint16_t>((bits >> 16) & 0x8000u);
  const uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (magnitude >= 0x477ff000u) return sign | 0x7c00u;  // 65520 and over round to infinity
  if (magnitude < 0x38800000u) {                        // under 2^-14: a subnormal half
    float m;
    std::memcpy(&m, &magnitude, sizeof m);
    return sign | static_cast<uint16_t>(std::nearbyint(m * 16777216.0f));  // exact scaling, then RNE
  }
  const uint32_t rebiased = magnitude - (112u << 23);
  return sign | static_cast<uint16_t>((rebiased + 0xfffu + ((rebiased >> 13) & 1u)) >> 13);
}

float bfloat16_to_float(uint16_t b) {
  const uint32_t bits = static_cast<uint32_t>(b) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

uint16_t float_to_bfloat16(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((bits >> 16) | 0x40u);  // NaN
  return static_cast<uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

template <class T>
struct Plain {
  using Storage = T;
  using Compute = T;
  static T load(T v) { return v; }
  static T store(T v) { return v; }
};
struct Half {
  using Storage = uint16_t;
  using Compute = float;
  static float load(uint16_t v) { return half_to_float(v); }
  static uint16_t store(float v) { return float_to_half(v); }
};
struct Bfloat16 {
  using Storage = uint16_t;
  using Compute = float;
  static float load(uint16_t v) { return bfloat16_to_float(v); }
  static uint16_t store(float v) { return float_to_bfloat16(v); }
};

// Integers wrap (computed unsigned), as on the GPU.
template <class T>
T combine(ncclRedOp_t op, T a, T b) {
  if constexpr (std::is_integral_v<T>) {
    using U = std::make_unsigned_t<T>;
    if (op == ncclSum || op == ncclAvg) return static_cast<T>(static_cast<U>(a) + static_cast<U>(b));
    if (op == ncclProd) return static_cast<T>(static_cast<U>(a) * static_cast<U>(b));
  } else {
    if (op == ncclSum || op == ncclAvg) return a + b;
    if (op == ncclProd) return a * b;
  }
  return op == ncclMax ? std::max(a, b) : std::min(a, b);
}

// out[i] = in[0][i] op in[1][i] op ... in order; ncclAvg divides the sum by the rank count. `out`
// may be one of the inputs (in place): each element is read from every input before it is written.
template <class Kind>
void reduce_as(ncclRedOp_t op, void* out, const std::vector<const void*>& in, size_t count) {
  using S = typename Kind::Storage;
  using C = typename Kind::Compute;
  const int n = static_cast<int>(in.size());
  for (size_t i = 0; i < count; ++i) {
    C acc = Kind::load(static_cast<const S*>(in[0])[i]);
    for (int p = 1; p < n; ++p) {
      acc = Kind::load(Kind::store(combine<C>(op, acc, Kind::load(static_cast<const S*>(in[p])[i]))));
    }
    if (op == ncclAvg) acc = static_cast<C>(acc / static_cast<C>(n));
    static_cast<S*>(out)[i] = Kind::store(acc);
  }
}

void reduce(ncclDataType_t type, ncclRedOp_t op, void* out, const std::vector<const void*>& in,
            size_t count) {
  switch (type) {
    case ncclInt8:
      return reduce_as<Plain<int8_t>>(op, out, in, count);
    case ncclUint8:
      return reduce_as<Plain<uint8_t>>(op, out, in, count);
    case ncclInt32:
      return reduce_as<Plain<int32_t>>(op, out, in, count);
    case ncclUint32:
      return reduce_as<Plain<uint32_t>>(op, out, in, count);
    case ncclInt64:
      return reduce_as<Plain<int64_t>>(op, out, in, count);
    case ncclUint64:
      return reduce_as<Plain<uint64_t>>(op, out, in, count);
    case ncclFloat16:
      return reduce_as<Half>(op, out, in, count);
    case ncclFloat32:
      return reduce_as<Plain<float>>(op, out, in, count);
    case ncclFloat64:
      return reduce_as<Plain<double>>(op, out, in, count);
    case ncclBfloat16:
      return reduce_as<Bfloat16>(op, out, in, count);
  }
}

// ---- Collectives ---------------------------------------------------------------------------------
const char* at(const void* base, size_t offset) { return static_cast<const char*>(base) + offset; }
char* at(void* base, size_t offset) { return static_cast<char*>(base) + offset; }

Message send_to(int peer, const void* data, size_t bytes) { return {peer, true, data, nullptr, bytes}; }
Message receive_from(int peer, void* data, size_t bytes) { return {peer, false, nullptr, data, bytes}; }

// Receives `bytes` from every other rank into a slot of `scratch` each, reduces them with the
// rank's own `mine` in rank order into `out`.
bool reduce_from_all(CommState& comm, const Op& op, std::vector<Message> sends, const void* mine, void* out,
                     size_t count) {
  const size_t bytes = count * type_size(op.type);
  std::vector<char> scratch(bytes * static_cast<size_t>(comm.nranks));
  std::vector<const void*> inputs(comm.nranks);
  for (int p = 0; p < comm.nranks; ++p) {
    inputs[p] = p == comm.rank ? mine : scratch.data() + bytes * static_cast<size_t>(p);
    if (p != comm.rank)
      sends.push_back(receive_from(p, scratch.data() + bytes * static_cast<size_t>(p), bytes));
  }
  if (!exchange(comm, sends)) return false;
  reduce(op.type, op.reduction, out, inputs, count);
  return true;
}

// Rank i owns elements [begin(i), begin(i) + size(i)): the count split as evenly as it goes.
struct Split {
  size_t count;
  int parts;
  size_t size(int i) const { return count / parts + (static_cast<size_t>(i) < count % parts ? 1 : 0); }
  size_t begin(int i) const { return count / parts * i + std::min<size_t>(i, count % parts); }
};

// Reduce-scatter onto the owners, then every owner sends its reduced part to everyone.
bool all_reduce(CommState& comm, const Op& op) {
  const size_t e = type_size(op.type);
  const Split split{op.count, comm.nranks};
  const int r = comm.rank;
  std::vector<Message> scatter;
  for (int p = 0; p < comm.nranks; ++p) {
    if (p != r) scatter.push_back(send_to(p, at(op.send, split.begin(p) * e), split.size(p) * e));
  }
  if (!reduce_from_all(comm, op, scatter, at(op.send, split.begin(r) * e), at(op.recv, split.begin(r) * e),
                       split.size(r))) {
    return false;
  }
  std::vector<Message> gather;
  for (int p = 0; p < comm.nranks; ++p) {
    if (p == r) continue;
    gather.push_back(send_to(p, at(op.recv, split.begin(r) * e), split.size(r) * e));
    gather.push_back(receive_from(p, at(op.recv, split.begin(p) * e), split.size(p) * e));
  }
  return exchange(comm, gather);
}

bool reduce_scatter(CommState& comm, const Op& op) {
  const size_t bytes = op.count * type_size(op.type);
  std::vector<Message> scatter;
  for (int p = 0; p < comm.nranks; ++p) {
    if (p != comm.rank) scatter.push_back(send_to(p, at(op.send, bytes * p), bytes));
  }
  return reduce_from_all(comm, op, scatter, at(op.send, bytes * comm.rank), op.recv, op.count);
}

// In place when send == recv + rank * bytes.
bool all_gather(CommState& comm, const Op& op) {
  const size_t bytes = op.count * type_size(op.type);
  if (at(op.recv, bytes * comm.rank) != op.send) std::memmove(at(op.recv, bytes * comm.rank), op.send, bytes);
  std::vector<Message> messages;
  for (int p = 0; p < comm.nranks; ++p) {
    if (p == comm.rank) continue;
    messages.push_back(send_to(p, op.send, bytes));
    messages.push_back(receive_from(p, at(op.recv, bytes * p), bytes));
  }
  return exchange(comm, messages);
}

bool broadcast(CommState& comm, const Op& op) {
  const size_t bytes = op.count * type_size(op.type);
  const int root = op.peer;
  std::vector<Message> messages;
  if (comm.rank != root) {
    messages.push_back(receive_from(root, op.recv, bytes));
  } else {
    if (op.recv != op.send) std::memmove(op.recv, op.send, bytes);
    for (int p = 0; p < comm.nranks; ++p) {
      if (p != root) messages.push_back(send_to(p, op.send, bytes));
    }
  }
  return exchange(comm, messages);
}

}  // namespace

size_t type_size(ncclDataType_t type) {
  switch (type) {
    case ncclInt8:
    case ncclUint8:
      return 1;
    case ncclFloat16:
    case ncclBfloat16:
      return 2;
    case ncclInt32:
    case ncclUint32:
    case ncclFloat32:
      return 4;
    case ncclInt64:
    case ncclUint64:
    case ncclFloat64:
      return 8;
  }
  return 0;
}

bool run_point_to_point(CommState& comm, const std::vector<Op>& ops) {
  std::vector<const Op*> self_sends, self_receives;
  std::vector<Message> messages;
  for (const Op& op : ops) {
    const size_t bytes = op.count * type_size(op.type);
    const bool is_send = op.kind == OpKind::Send;
    if (op.peer == comm.rank) {
      (is_send ? self_sends : self_receives).push_back(&op);
    } else {
      messages.push_back(is_send ? send_to(op.peer, op.send, bytes) : receive_from(op.peer, op.recv, bytes));
    }
  }
  if (self_sends.size() != self_receives.size()) {
    comm.fail(ncclInvalidUsage,
              "rank " + std::to_string(comm.rank) + " sent " + std::to_string(self_sends.size()) +
                  " messages to itself in one group but received " + std::to_string(self_receives.size()));
    return false;
  }
  for (size_t i = 0; i < self_sends.size(); ++i) {
    const size_t sent = self_sends[i]->count * type_size(self_sends[i]->type);
    const size_t expected = self_receives[i]->count * type_size(self_receives[i]->type);
    if (sent != expected) {
      comm.fail(ncclInvalidUsage, "rank " + std::to_string(comm.rank) + " sent itself " +
                                      std::to_string(sent) + " bytes but its receive expects " +
                                      std::to_string(expected));
      return false;
    }
    if (sent > 0) std::memmove(self_receives[i]->recv, self_sends[i]->send, sent);
  }
  return exchange(comm, messages);
}

bool run_collective(CommState& comm, const Op& op) {
  switch (op.kind) {
    case OpKind::AllReduce:
      return all_reduce(comm, op);
    case OpKind::ReduceScatter:
      return reduce_scatter(comm, op);
    case OpKind::AllGather:
      return all_gather(comm, op);
    case OpKind::Broadcast:
      return broadcast(comm, op);
    case OpKind::Send:
    case OpKind::Recv:
      break;
  }
  return run_point_to_point(comm, {op});
}

}  // namespace ampipe_gpu_emulator::nccl

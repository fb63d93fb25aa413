// Fuzzes the sharded checkpoint reader (train/sharded_checkpoint.h ShardedCheckpoint): the input is
// the text of checkpoint_index.json, beside a fixed, valid shard (sharded_fixture.h; the seed is the
// index that writer produces). A reader that accepts an index must then read every tensor whole
// from the shard's bytes.
// Findings: any exception other than ampipe::Error, a crash or sanitizer report (a read outside the
// shard's bytes, say), a hang or unbounded memory; an accepted index whose tensors cannot be read,
// or whose pieces do not tile their tensors (a read leaving an element unwritten).
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

#include "fuzz_util.h"
#include "sharded_fixture.h"

using namespace ampipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = fuzz::scratch_dir() + "/sharded";
  static const bool made = [&] {
    std::filesystem::create_directories(dir);
    fuzz::write_sharded_fixture(dir, /*with_index=*/false);
    return true;
  }();
  (void)made;
  fuzz::write_bytes(sharded_index_path(dir), data, size);
  const bool problem = !sharded_checkpoint_problem(dir).empty();
  bool accepted = false;
  try {
    const ShardedCheckpoint checkpoint(dir);
    accepted = true;
    for (const std::string& name : checkpoint.tensor_names()) {
      int64_t n = 1;
      for (int64_t d : checkpoint.shape(name)) n *= d;
      if (n > (1 << 20)) continue;  // tiled by pieces of a 64-byte shard: cannot be, but do not allocate
      Tensor out = Tensor::empty({n});
      for (int64_t i = 0; i < n; ++i) out.data<float>()[i] = -12345.0f;
      checkpoint.read(name, 0, out);
      for (int64_t i = 0; i < n; ++i)
        if (out.data<float>()[i] == -12345.0f)
          fuzz::finding("a read left element " + std::to_string(i) + " of '" + name + "' unwritten");
    }
  } catch (const Error&) {
    if (accepted) fuzz::finding("an accepted index could not read one of its tensors");
  }
  if (accepted == problem) fuzz::finding("ShardedCheckpoint and sharded_checkpoint_problem disagree");
  return 0;
}

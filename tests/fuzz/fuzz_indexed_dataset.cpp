// Fuzzes the Megatron indexed-dataset reader (train/indexed_dataset.h, IndexedDataset) on .idx/.bin
// pairs. The input is split in two: its first 4 bytes (little-endian) give the .idx part's length
// (capped at what follows), the .idx part follows, and the rest is the .bin part; both are written
// under a per-process temporary prefix and opened. An accepted dataset is read whole: every
// sequence's tokens (read), every document index, and check_vocab.
// Findings: any exception other than ampipe::Error, a crash or sanitizer report (a read outside the
// mapped files included), a hang or unbounded memory; an accepted dataset whose sequence lengths do
// not sum to total_tokens or whose document indices are not 0..S non-decreasing.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "fuzz_util.h"
#include "train/indexed_dataset.h"

using namespace ampipe;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 4) return 0;
  uint32_t idx_size = 0;
  for (int i = 0; i < 4; ++i) idx_size |= static_cast<uint32_t>(data[i]) << (8 * i);
  const size_t rest = size - 4;
  const size_t idx_bytes = std::min<size_t>(idx_size, rest);
  const std::string prefix = fuzz::scratch_dir() + "/data";
  fuzz::write_bytes(indexed_idx_path(prefix), data + 4, idx_bytes);
  fuzz::write_bytes(indexed_bin_path(prefix), data + 4 + idx_bytes, rest - idx_bytes);

  fuzz::accepts([&] {
    const IndexedDataset ds(prefix);
    const int64_t sequences = ds.num_sequences();
    int64_t total = 0;
    std::vector<int32_t> tokens;
    for (int64_t i = 0; i < sequences; ++i) {
      const int64_t length = ds.sequence_length(i);
      if (length < 0) fuzz::finding("IndexedDataset: negative sequence length accepted");
      total += length;
      tokens.resize(static_cast<size_t>(length));
      fuzz::accepts([&] { ds.read(i, 0, length, tokens.data()); });
      if (length > 0) fuzz::accepts([&] { ds.read(i, length - 1, 1, tokens.data()); });
    }
    if (total != ds.total_tokens()) fuzz::finding("IndexedDataset: lengths do not sum to total_tokens");
    const int64_t* docs = ds.document_indices();
    if (docs[0] != 0 || docs[ds.num_documents()] != sequences)
      fuzz::finding("IndexedDataset: document indices do not span [0, S]");
    for (int64_t d = 0; d < ds.num_documents(); ++d)
      if (docs[d + 1] < docs[d]) fuzz::finding("IndexedDataset: document indices decrease");
    fuzz::accepts([&] { ds.check_vocab(256); });
    fuzz::accepts([&] { ds.check_vocab(int64_t{1} << 40); });
    // Out-of-range requests must be refused, not read.
    fuzz::accepts([&] { ds.read(sequences, 0, 1, tokens.data()); });
    fuzz::accepts([&] { ds.sequence_length(-1); });
  });
  return 0;
}

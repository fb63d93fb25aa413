// The model-shape grid shared by `ampipe bench` and `ampipe plan`: every model flag of `train`
// takes a comma-separated list (a grid axis), and the grid is their product.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cli/model_flags.h"
#include "model/config.h"

namespace CLI {
class App;
}

namespace ampipe {

// "a, b,c" -> {"a", "b", "c"} (items trimmed; empty items kept, for the caller to refuse).
std::vector<std::string> split_list(const std::string& text);
// printf-style formatting of one number ("%.2fx") into a string, for table cells.
std::string format_number(const char* format, double value);
// A comma-separated list of integers >= min_value, duplicates dropped; refuses anything else
// naming the flag and the value.
std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& text, int64_t min_value);

struct GridFlags {
  std::string seq_length = "2048";
  std::string hidden_size = "512";
  std::string num_attention_heads;  // empty: hidden/64 (at least 1) for each hidden size
  std::string ffn_hidden_size;      // empty: 4 * hidden for each hidden size
  std::string num_experts;          // empty: the caller's default
  std::string top_k = "1";
  FamilyFlags family;  // one family for the whole grid (not a list)
};

struct GridShape {
  int64_t N, d, heads, ffn, E, k;
  ModelConfig parts;  // the family and its parts (shape fields unused)
  // One transformer block of this shape (num_layers 1, max_seq_len N); validated.
  ModelConfig config(double capacity_factor) const;
  // "N=4096 d=512 h=8 f=2048 E=4 k=1", then the family's parts that differ from the GPT defaults
  // (" mixtral g=2", " swiglu").
  std::string describe() const;
};

// Registers --seq-length --hidden-size --num-attention-heads --ffn-hidden-size --moe-num-experts
// --moe-top-k and the model-family flags (cli/model_flags.h) on `cmd`, bound to `flags` (which must
// outlive parsing).
void add_grid_flags(CLI::App& cmd, GridFlags& flags, const std::string& experts_default_text);
// The product of the axes, in flag order (N outermost); every shape validated.
std::vector<GridShape> expand_grid(const GridFlags& flags, int64_t default_experts, double capacity_factor);

}  // namespace ampipe

#include "cli/grid.h"

#include <CLI/CLI.hpp>

#include <algorithm>
#include <charconv>
#include <cstdio>

#include "core/error.h"

namespace ampipe {

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  size_t start = 0;
  while (true) {
    const size_t comma = text.find(',', start);
    std::string item = text.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
    const size_t b = item.find_first_not_of(" \t"), e = item.find_last_not_of(" \t");
    items.push_back(b == std::string::npos ? std::string() : item.substr(b, e - b + 1));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return items;
}

std::string format_number(const char* format, double value) {
  char buf[64];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}

std::vector<int64_t> parse_int_list(const std::string& flag, const std::string& text, int64_t min_value) {
  std::vector<int64_t> values;
  for (const std::string& item : split_list(text)) {
    int64_t v = 0;
    const auto [end, ec] = std::from_chars(item.data(), item.data() + item.size(), v);
    AMPIPE_CHECK(!item.empty() && ec == std::errc() && end == item.data() + item.size() && v >= min_value)
        << flag << " '" << text << "': '" << item << "' is not allowed; expected a comma-separated list of integers >= "
        << min_value;
    if (std::find(values.begin(), values.end(), v) == values.end()) values.push_back(v);
  }
  return values;
}

ModelConfig GridShape::config(double capacity_factor) const {
  ModelConfig c = parts;
  c.num_layers = 1;
  c.max_seq_len = N;
  c.hidden_size = d;
  c.num_attention_heads = heads;
  c.ffn_hidden_size = ffn;
  c.num_experts = E;
  c.top_k = k;
  c.capacity_factor = capacity_factor;
  c.validate();
  return c;
}

std::string GridShape::describe() const {
  std::string s = "N=" + std::to_string(N) + " d=" + std::to_string(d) + " h=" + std::to_string(heads) +
                  " f=" + std::to_string(ffn) + " E=" + std::to_string(E) + " k=" + std::to_string(k);
  const ModelConfig gpt;
  if (parts.num_query_groups > 0) s += " g=" + std::to_string(parts.num_query_groups);
  if (parts.mixtral()) return s + " mixtral";
  if (parts.normalization != gpt.normalization) s += " " + parts.normalization;
  if (parts.position_embedding_type != gpt.position_embedding_type) s += " " + parts.position_embedding_type;
  if (parts.swiglu) s += " swiglu";
  if (!parts.add_bias_linear) s += " no-bias";
  return s;
}

void add_grid_flags(CLI::App& cmd, GridFlags& f, const std::string& experts_default_text) {
  cmd.add_option("--seq-length", f.seq_length, "Sequence lengths N (comma-separated list)")->capture_default_str();
  cmd.add_option("--hidden-size", f.hidden_size, "Hidden sizes d (list)")->capture_default_str();
  cmd.add_option("--num-attention-heads", f.num_attention_heads,
                 "Attention heads h (list); default hidden/64 (at least 1) for each hidden size");
  cmd.add_option("--ffn-hidden-size", f.ffn_hidden_size, "Expert FFN hidden sizes f (list); default 4 * hidden");
  cmd.add_option("--moe-num-experts", f.num_experts, "Experts E (list); default " + experts_default_text);
  cmd.add_option("--moe-top-k", f.top_k, "Experts per token k (list)")->capture_default_str();
  add_family_flags(cmd, f.family);
}

std::vector<GridShape> expand_grid(const GridFlags& f, int64_t default_experts, double capacity_factor) {
  const std::vector<int64_t> seqs = parse_int_list("--seq-length", f.seq_length, 1);
  const std::vector<int64_t> hiddens = parse_int_list("--hidden-size", f.hidden_size, 1);
  const std::vector<int64_t> heads_list = f.num_attention_heads.empty()
                                              ? std::vector<int64_t>{}
                                              : parse_int_list("--num-attention-heads", f.num_attention_heads, 1);
  const std::vector<int64_t> ffn_list =
      f.ffn_hidden_size.empty() ? std::vector<int64_t>{} : parse_int_list("--ffn-hidden-size", f.ffn_hidden_size, 1);
  const std::vector<int64_t> experts = f.num_experts.empty() ? std::vector<int64_t>{default_experts}
                                                             : parse_int_list("--moe-num-experts", f.num_experts, 1);
  const std::vector<int64_t> top_ks = parse_int_list("--moe-top-k", f.top_k, 1);
  ModelConfig parts;
  if (f.family.command) apply_family_flags(f.family, parts);
  std::vector<GridShape> shapes;
  for (int64_t N : seqs)
    for (int64_t d : hiddens) {
      const std::vector<int64_t> hs = heads_list.empty() ? std::vector<int64_t>{std::max<int64_t>(1, d / 64)} : heads_list;
      const std::vector<int64_t> fs = ffn_list.empty() ? std::vector<int64_t>{4 * d} : ffn_list;
      for (int64_t h : hs)
        for (int64_t ffn : fs)
          for (int64_t E : experts)
            for (int64_t k : top_ks) shapes.push_back({N, d, h, ffn, E, k, parts});
    }
  for (const GridShape& s : shapes) s.config(capacity_factor);  // validate every shape before any work
  return shapes;
}

}  // namespace ampipe

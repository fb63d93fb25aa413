#include "plan/profile.h"

#include <cmath>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <vector>

#include "core/atomic_file.h"
#include "core/error.h"

namespace ampipe {

namespace {

using Json = nlohmann::json;

// Every field a profile may have, in the order profile_to_json writes them.
const std::vector<std::string> kTopFields = {"name",
                                             "source",
                                             "matrix_flops",
                                             "matrix_flops_bf16",
                                             "attention_efficiency",
                                             "attention_backward_efficiency",
                                             "memory_bandwidth",
                                             "intra_node",
                                             "inter_node",
                                             "tensor_link",
                                             "ranks_per_node",
                                             "bytes_per_element",
                                             "task_overhead",
                                             "overlap_slowdown",
                                             "comm_overlap_slowdown",
                                             "cache_bytes",
                                             "cache_bandwidth",
                                             "collectives",
                                             "host_staging_bandwidth"};
const std::vector<std::string> kLinkFields = {"bandwidth", "latency"};

constexpr double kMaxEfficiency = 1.5;

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const std::string& item : items) out += (out.empty() ? "" : ", ") + item;
  return out;
}

std::string describe(const Json& value) {
  const std::string type = value.is_null() ? "null" : value.type_name();
  std::string text = value.dump();
  if (text.size() > 40) text = text.substr(0, 37) + "...";
  return type + " " + text;
}

// The value checks, shared by validate() (on the struct) and parsing (on the JSON), so both give
// the same message.
void check_finite(const std::string& where, const std::string& field, double value) {
  AMPIPE_CHECK(std::isfinite(value)) << where << ": field '" << field << "' must be a finite number, got "
                                     << value;
}

void check_rate(const std::string& where, const std::string& field, double value) {
  check_finite(where, field, value);
  AMPIPE_CHECK(value > 0) << where << ": field '" << field << "' must be > 0, got " << value;
}

void check_efficiency(const std::string& where, const std::string& field, double value) {
  check_finite(where, field, value);
  AMPIPE_CHECK(value > 0 && value <= kMaxEfficiency)
      << where << ": field '" << field << "' must be in (0, " << kMaxEfficiency
      << "] (a fraction of matrix_flops), got " << value;
}

void check_at_least(const std::string& where, const std::string& field, double value, double minimum) {
  check_finite(where, field, value);
  AMPIPE_CHECK(value >= minimum) << where << ": field '" << field << "' must be >= " << minimum << ", got "
                                 << value;
}

void check_count(const std::string& where, const std::string& field, int64_t value) {
  AMPIPE_CHECK(value >= 1) << where << ": field '" << field << "' must be an integer >= 1, got " << value;
}

void check_link(const std::string& where, const std::string& field, const LinkProfile& link) {
  check_rate(where, field + ".bandwidth", link.bandwidth);
  check_at_least(where, field + ".latency", link.latency, 0.0);
}

// Refuses any key of `object` not in `known`, naming the first one (in document order).
void refuse_unknown(const std::string& where, const std::string& prefix, const Json& object,
                    const std::vector<std::string>& known) {
  for (auto it = object.begin(); it != object.end(); ++it) {
    bool found = false;
    for (const std::string& k : known) found = found || k == it.key();
    AMPIPE_CHECK(found) << where << ": unknown field '" << prefix << it.key() << "' (known fields"
                        << (prefix.empty() ? "" : " of '" + prefix.substr(0, prefix.size() - 1) + "'") << ": "
                        << join(known) << ")";
  }
}

const Json& require(const std::string& where, const std::string& prefix, const Json& object,
                    const std::string& key) {
  const auto it = object.find(key);
  AMPIPE_CHECK(it != object.end()) << where << ": field '" << prefix << key
                                   << "' is missing (required; see src/plan/profile.h)";
  return *it;
}

std::string get_string(const std::string& where, const std::string& field, const Json& value) {
  AMPIPE_CHECK(value.is_string()) << where << ": field '" << field << "' must be a string, got "
                                  << describe(value);
  std::string text = value.get<std::string>();
  AMPIPE_CHECK(!text.empty()) << where << ": field '" << field << "' must not be empty";
  return text;
}

double get_number(const std::string& where, const std::string& field, const Json& value) {
  AMPIPE_CHECK(value.is_number()) << where << ": field '" << field << "' must be a number, got "
                                  << describe(value);
  return value.get<double>();
}

// An integer, also written as 8.0; refuses 8.5, true, "8".
int64_t get_integer(const std::string& where, const std::string& field, const Json& value) {
  if (value.is_number_integer()) return value.get<int64_t>();
  const bool integral_float = value.is_number_float() && std::isfinite(value.get<double>()) &&
                              std::floor(value.get<double>()) == value.get<double>() &&
                              std::abs(value.get<double>()) < 9.0e15;
  AMPIPE_CHECK(integral_float) << where << ": field '" << field << "' must be an integer, got "
                               << describe(value);
  return static_cast<int64_t>(value.get<double>());
}

LinkProfile get_link(const std::string& where, const std::string& field, const Json& value) {
  AMPIPE_CHECK(value.is_object())
      << where << ": field '" << field
      << "' must be an object {\"bandwidth\": bytes/s, \"latency\": seconds}, got " << describe(value);
  const std::string prefix = field + ".";
  refuse_unknown(where, prefix, value, kLinkFields);
  LinkProfile link;
  link.bandwidth = get_number(where, prefix + "bandwidth", require(where, prefix, value, "bandwidth"));
  link.latency = get_number(where, prefix + "latency", require(where, prefix, value, "latency"));
  return link;
}

// Parses JSON, refusing a key that appears twice in one object (nlohmann would keep the last).
Json parse_json(const std::string& text, const std::string& where) {
  std::vector<std::set<std::string>> open_objects;
  std::string duplicate;
  auto check_keys = [&](int, Json::parse_event_t event, Json& parsed) {
    using Event = Json::parse_event_t;
    if (event == Event::object_start) open_objects.emplace_back();
    if (event == Event::object_end) open_objects.pop_back();
    if (event == Event::key && !open_objects.back().insert(parsed.get<std::string>()).second &&
        duplicate.empty())
      duplicate = parsed.get<std::string>();
    return true;
  };
  Json root;
  try {
    root = Json::parse(text, check_keys);
  } catch (const Json::exception& e) {
    AMPIPE_CHECK(false) << where << ": not a valid JSON hardware profile: " << e.what();
  }
  AMPIPE_CHECK(duplicate.empty()) << where << ": field '" << duplicate << "' appears twice";
  AMPIPE_CHECK(root.is_object()) << where << ": a hardware profile must be a JSON object, got "
                                 << describe(root);
  return root;
}

}  // namespace

void HardwareProfile::validate(const std::string& where) const {
  AMPIPE_CHECK(!name.empty()) << where << ": field 'name' must not be empty";
  AMPIPE_CHECK(!source.empty()) << where << ": field 'source' must not be empty";
  check_rate(where, "matrix_flops", matrix_flops);
  check_efficiency(where, "attention_efficiency", attention_efficiency);
  check_efficiency(where, "attention_backward_efficiency", attention_backward_efficiency);
  check_rate(where, "memory_bandwidth", memory_bandwidth);
  check_link(where, "intra_node", intra_node);
  check_link(where, "inter_node", inter_node);
  // not given: bandwidth 0 and latency 0 (intra_node is used); given: a real link
  if (tensor_link.bandwidth != 0 || tensor_link.latency != 0) check_link(where, "tensor_link", tensor_link);
  check_count(where, "ranks_per_node", ranks_per_node);
  check_count(where, "bytes_per_element", bytes_per_element);
  check_at_least(where, "task_overhead", task_overhead, 0.0);
  check_at_least(where, "overlap_slowdown", overlap_slowdown, 1.0);
  check_at_least(where, "comm_overlap_slowdown", comm_overlap_slowdown, 1.0);
  check_at_least(where, "cache_bytes", cache_bytes, 0.0);
  // 0 = not given; only meaningful (and then required) with a cache.
  check_at_least(where, "cache_bandwidth", cache_bandwidth, 0.0);
  AMPIPE_CHECK(cache_bytes == 0 || cache_bandwidth > 0)
      << where
      << ": field 'cache_bandwidth' is required and must be > 0 when cache_bytes > 0 (the rate of "
         "elementwise "
      << "stages whose working set fits in the cache), got " << cache_bandwidth;
  AMPIPE_CHECK(collectives == "nccl" || collectives == "mpi")
      << where << ": field 'collectives' must be \"nccl\" or \"mpi\", got \"" << collectives << "\"";
  check_at_least(where, "host_staging_bandwidth", host_staging_bandwidth, 0.0);
  AMPIPE_CHECK(collectives == "mpi" || host_staging_bandwidth == 0)
      << where << ": field 'host_staging_bandwidth' is for \"collectives\": \"mpi\" (NCCL moves GPU buffers "
      << "without host copies), got " << host_staging_bandwidth << " with \"nccl\"";
}

HardwareProfile parse_profile(const std::string& json_text, const std::string& where) {
  const Json root = parse_json(json_text, where);
  refuse_unknown(where, "", root, kTopFields);
  auto field = [&](const std::string& key) -> const Json& { return require(where, "", root, key); };

  HardwareProfile p;
  p.name = get_string(where, "name", field("name"));
  p.source = get_string(where, "source", field("source"));
  p.matrix_flops = get_number(where, "matrix_flops", field("matrix_flops"));
  p.attention_efficiency = get_number(where, "attention_efficiency", field("attention_efficiency"));
  p.attention_backward_efficiency =
      get_number(where, "attention_backward_efficiency", field("attention_backward_efficiency"));
  p.memory_bandwidth = get_number(where, "memory_bandwidth", field("memory_bandwidth"));
  p.intra_node = get_link(where, "intra_node", field("intra_node"));
  p.inter_node = get_link(where, "inter_node", field("inter_node"));
  if (root.contains("tensor_link")) {
    p.tensor_link = get_link(where, "tensor_link", root["tensor_link"]);
    check_link(where, "tensor_link", p.tensor_link);  // when written, a real link
  }
  p.ranks_per_node = get_integer(where, "ranks_per_node", field("ranks_per_node"));
  p.bytes_per_element = get_integer(where, "bytes_per_element", field("bytes_per_element"));
  if (root.contains("task_overhead"))
    p.task_overhead = get_number(where, "task_overhead", root["task_overhead"]);
  if (root.contains("overlap_slowdown"))
    p.overlap_slowdown = get_number(where, "overlap_slowdown", root["overlap_slowdown"]);
  if (root.contains("comm_overlap_slowdown"))
    p.comm_overlap_slowdown = get_number(where, "comm_overlap_slowdown", root["comm_overlap_slowdown"]);
  if (root.contains("cache_bytes")) p.cache_bytes = get_number(where, "cache_bytes", root["cache_bytes"]);
  if (root.contains("cache_bandwidth")) {
    p.cache_bandwidth = get_number(where, "cache_bandwidth", root["cache_bandwidth"]);
    check_rate(where, "cache_bandwidth", p.cache_bandwidth);  // when written, a real rate
  }
  if (root.contains("collectives")) p.collectives = get_string(where, "collectives", root["collectives"]);
  if (root.contains("matrix_flops_bf16")) {
    p.matrix_flops_bf16 = get_number(where, "matrix_flops_bf16", root["matrix_flops_bf16"]);
    check_rate(where, "matrix_flops_bf16", p.matrix_flops_bf16);  // when written, a real rate
  }
  if (root.contains("host_staging_bandwidth")) {
    p.host_staging_bandwidth = get_number(where, "host_staging_bandwidth", root["host_staging_bandwidth"]);
    check_rate(where, "host_staging_bandwidth", p.host_staging_bandwidth);  // when written, a real rate
  }
  p.validate(where);
  return p;
}

HardwareProfile load_profile(const std::string& path) { return parse_profile(read_file(path), path); }

std::string profile_to_json(const HardwareProfile& p) {
  // ordered_json keeps the documented field order; doubles are written with enough digits to
  // read back exactly.
  auto link = [](const LinkProfile& l) {
    nlohmann::ordered_json j;
    j["bandwidth"] = l.bandwidth;
    j["latency"] = l.latency;
    return j;
  };
  nlohmann::ordered_json j;
  j["name"] = p.name;
  j["source"] = p.source;
  j["matrix_flops"] = p.matrix_flops;
  if (p.matrix_flops_bf16 > 0) j["matrix_flops_bf16"] = p.matrix_flops_bf16;  // absent: not known
  j["attention_efficiency"] = p.attention_efficiency;
  j["attention_backward_efficiency"] = p.attention_backward_efficiency;
  j["memory_bandwidth"] = p.memory_bandwidth;
  j["intra_node"] = link(p.intra_node);
  j["inter_node"] = link(p.inter_node);
  if (p.tensor_link.bandwidth > 0) j["tensor_link"] = link(p.tensor_link);  // absent: intra_node
  j["ranks_per_node"] = p.ranks_per_node;
  j["bytes_per_element"] = p.bytes_per_element;
  j["task_overhead"] = p.task_overhead;
  j["overlap_slowdown"] = p.overlap_slowdown;
  j["comm_overlap_slowdown"] = p.comm_overlap_slowdown;
  j["cache_bytes"] = p.cache_bytes;
  if (p.cache_bandwidth > 0) j["cache_bandwidth"] = p.cache_bandwidth;  // absent: no cache figure
  j["collectives"] = p.collectives;
  if (p.host_staging_bandwidth > 0) j["host_staging_bandwidth"] = p.host_staging_bandwidth;
  return j.dump(2);
}

void save_profile(const HardwareProfile& profile, const std::string& path) {
  profile.validate(path);
  write_file_atomically(path, profile_to_json(profile) + "\n");
}

}  // namespace ampipe

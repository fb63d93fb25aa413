#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "core/error.h"
#include "plan/profile.h"

namespace ampipe {

namespace fs = std::filesystem;

HardwareProfile load_hardware_profile(const std::string& name_or_path) {
  AMPIPE_CHECK(!name_or_path.empty()) << "--hardware: empty profile name";
  if (fs::exists(name_or_path)) return load_profile(name_or_path);
  std::vector<fs::path> dirs;
  if (const char* env = std::getenv("AMPIPE_PROFILES_DIR"); env && *env) dirs.emplace_back(env);
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec) {
    dirs.push_back(exe.parent_path().parent_path() / "profiles");
    dirs.push_back(exe.parent_path() / "profiles");
  }
  dirs.emplace_back("profiles");
  const std::string file = name_or_path.ends_with(".json") ? name_or_path : name_or_path + ".json";
  std::string looked;
  for (const fs::path& d : dirs) {
    if (fs::exists(d / file)) return load_profile((d / file).string());
    looked += (looked.empty() ? "" : ", ") + d.string();
  }
  AMPIPE_CHECK(false) << "--hardware '" << name_or_path << "': no such file, and no " << file << " in " << looked
                      << " (set AMPIPE_PROFILES_DIR, or give a path)";
  return {};
}

}  // namespace ampipe

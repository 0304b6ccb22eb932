#include "machine/config.h"

#include <algorithm>
#include <cctype>
#include <optional>

#include <functional>
#include <sstream>
#include <vector>

namespace ds::machine {

namespace {

// The whitespace-separated fields of a line, "" for comments and blank lines.
std::vector<std::string> Fields(std::string_view line) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < line.size()) {
    while (i < line.size() && (line[i] == ' ' || line[i] == '\t')) ++i;
    if (i >= line.size() || (out.empty() && line[i] == '#')) break;
    size_t j = i;
    while (j < line.size() && line[j] != ' ' && line[j] != '\t') ++j;
    out.emplace_back(line.substr(i, j - i));
    i = j;
  }
  return out;
}

// The line of `text` starting at `pos` (without its newline); `pos` moves past it. `ended`: the
// line had a newline (the last line of a file may not).
std::string_view NextLine(std::string_view text, size_t& pos, bool* ended = nullptr) {
  const size_t nl = text.find('\n', pos);
  std::string_view cur = text.substr(pos, nl == std::string_view::npos ? std::string_view::npos : nl - pos);
  pos = nl == std::string_view::npos ? text.size() : nl + 1;
  if (ended) *ended = nl != std::string_view::npos;
  return cur;
}

// Replaces the lines whose `field` (unescaped) equals `key`: the first by `line`, others dropped.
std::string SetLine(std::string_view text, size_t field, const std::string& key,
                    const std::optional<std::string>& line) {
  std::string out;
  bool placed = false;
  size_t pos = 0;
  while (pos < text.size()) {
    std::string_view cur = NextLine(text, pos);
    auto f = Fields(cur);
    if (f.size() > field && UnescapeField(f[field]) == key) {
      if (!placed && line) out += *line + "\n";
      placed = true;
      continue;
    }
    out.append(cur);
    out += "\n";
  }
  if (!placed && line) out += *line + "\n";
  return out;
}

}  // namespace

std::string EscapeField(std::string_view s) {
  std::string out;
  for (char c : s) {
    switch (c) {
      case ' ': out += "\\040"; break;
      case '\t': out += "\\011"; break;
      case '\n': out += "\\012"; break;
      case '\\': out += "\\134"; break;
      default: out += c;
    }
  }
  return out;
}

std::string UnescapeField(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] >= '0' && s[i + 1] <= '3' &&
        s[i + 2] >= '0' && s[i + 2] <= '7' && s[i + 3] >= '0' && s[i + 3] <= '7') {
      out += char((s[i + 1] - '0') * 64 + (s[i + 2] - '0') * 8 + (s[i + 3] - '0'));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::string CrypttabLine(const std::string& name, const std::string& device,
                         const std::string& key_file, const std::string& header) {
  return name + " " + EscapeField(device) + " " + EscapeField(key_file) + " luks,nofail,header=" +
         EscapeField(header);
}

namespace {

// The name of the link in `dir` (below `root`) that points at `dev`, or "". A link's target is
// relative ("../../sdb1"): its last component names the device.
std::string LinkTo(Env& env, const MachineRoot& root, const std::string& dir, const std::string& dev) {
  const std::string base = dev.substr(dev.rfind('/') + 1);
  auto names = env.ListDir(root.Path(dir));
  if (!names.ok()) return "";
  std::vector<std::string> sorted = *names;
  std::sort(sorted.begin(), sorted.end());  // the same choice on every run
  for (const auto& n : sorted) {
    auto target = env.ReadLink(root.Path(dir + "/" + n));
    if (target.ok() && target->substr(target->rfind('/') + 1) == base) return n;
  }
  return "";
}

}  // namespace

std::string StableDeviceSpec(Env& env, const MachineRoot& root, const std::string& dev) {
  if (std::string id = LinkTo(env, root, "/dev/disk/by-id", dev); !id.empty()) return "/dev/disk/by-id/" + id;
  if (std::string pu = LinkTo(env, root, "/dev/disk/by-partuuid", dev); !pu.empty()) return "PARTUUID=" + pu;
  return dev;
}

std::string BootDeviceSpec(Env& env, const MachineRoot& root, const std::string& dev) {
  if (std::string pu = LinkTo(env, root, "/dev/disk/by-partuuid", dev); !pu.empty()) return "PARTUUID=" + pu;
  return StableDeviceSpec(env, root, dev);
}

std::string FstabLine(const FstabEntry& e) {
  std::ostringstream o;
  o << EscapeField(e.spec) << " " << EscapeField(e.file) << " " << e.vfstype << " " << e.options
    << " " << e.freq << " " << e.passno;
  return o.str();
}

FstabEntry MappingFstabEntry(const std::string& name, const std::string& mountpoint,
                             const std::string& fstype, const std::optional<FstabEntry>& original) {
  FstabEntry e;
  e.spec = "/dev/mapper/" + name;
  e.file = mountpoint;
  e.vfstype = fstype;
  e.options = original ? original->options : "defaults";
  e.freq = original ? original->freq : 0;
  e.passno = original ? original->passno : 2;
  bool has_nofail = false;
  std::stringstream ss(e.options);
  for (std::string opt; std::getline(ss, opt, ',');) has_nofail |= opt == "nofail";
  if (!has_nofail) e.options += ",nofail";
  return e;
}

std::string SetFstabLine(std::string_view text, const std::string& mountpoint,
                         const std::optional<std::string>& line) {
  return SetLine(text, 1, mountpoint, line);
}

std::string SetCrypttabLine(std::string_view text, const std::string& name,
                            const std::optional<std::string>& line) {
  return SetLine(text, 0, name, line);
}

namespace {

constexpr std::string_view kLvmBegin = "# diskseal begin";
constexpr std::string_view kLvmEnd = "# diskseal end";

// A path as an LVM filter regex matching exactly it: regex metacharacters in brackets; "" when the
// path holds a character that cannot be written that way in an LVM config string.
std::string ExactRegex(const std::string& path) {
  std::string out = "^";
  for (char c : path) {
    if (std::isalnum(uint8_t(c)) || std::string_view("/-_:@,=%").find(c) != std::string_view::npos) out += c;
    else if (std::string_view(".*+?()[{}$").find(c) != std::string_view::npos) out += std::string("[") + c + "]";
    else return "";
  }
  return out + "$";
}

// The line without its comment, trimmed.
std::string_view Setting(std::string_view line) {
  line = line.substr(0, line.find('#'));
  while (!line.empty() && (line.front() == ' ' || line.front() == '\t')) line.remove_prefix(1);
  while (!line.empty() && (line.back() == ' ' || line.back() == '\t' || line.back() == '\r')) line.remove_suffix(1);
  return line;
}

// The value of `key = value` on a setting line, or nullopt when the line sets something else.
std::optional<std::string_view> ValueOf(std::string_view setting, std::string_view key) {
  if (setting.substr(0, key.size()) != key) return std::nullopt;
  std::string_view rest = setting.substr(key.size());
  while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) rest.remove_prefix(1);
  if (rest.empty() || rest.front() != '=') return std::nullopt;
  rest.remove_prefix(1);
  while (!rest.empty() && (rest.front() == ' ' || rest.front() == '\t')) rest.remove_prefix(1);
  return rest;
}

}  // namespace

std::string WithoutLvmRejectFilter(std::string_view lvmlocal) {
  std::string out;
  bool inside = false;
  size_t pos = 0;
  while (pos < lvmlocal.size()) {
    bool ended = false;
    std::string_view cur = NextLine(lvmlocal, pos, &ended);
    if (!inside && cur.substr(0, kLvmBegin.size()) == kLvmBegin) {
      inside = true;
      continue;
    }
    if (inside) {
      if (cur.substr(0, kLvmEnd.size()) == kLvmEnd) inside = false;
      continue;
    }
    out += cur;
    if (ended) out += '\n';
  }
  return out;
}

std::string WithLvmRejectFilter(std::string_view lvmlocal, const std::vector<std::string>& paths) {
  std::string out = WithoutLvmRejectFilter(lvmlocal);
  if (!out.empty() && out.back() != '\n') out += '\n';
  std::string patterns;
  for (const auto& p : paths) {
    std::string re = ExactRegex(p);
    if (re.empty()) continue;
    patterns += (patterns.empty() ? "\"r|" : ", \"r|") + re + "|\"";
  }
  out += std::string(kLvmBegin) +
         ": the encrypted OS volume's raw device is never an LVM physical volume (diskseal enable --volume-type OS)\n"
         "devices {\n"
         "\tglobal_filter = [ " + patterns + " ]\n"
         "}\n" + std::string(kLvmEnd) + "\n";
  return out;
}

std::string LvmFilterProblem(std::string_view lvm_conf, std::string_view lvmlocal) {
  const std::string local = WithoutLvmRejectFilter(lvmlocal);
  for (const auto& [file, text] : {std::pair<std::string_view, std::string_view>{"lvm.conf", lvm_conf},
                                   std::pair<std::string_view, std::string_view>{"lvmlocal.conf", local}}) {
    size_t pos = 0;
    while (pos < text.size()) {
      std::string_view s = Setting(NextLine(text, pos));
      if (ValueOf(s, "global_filter"))
        return std::string(file) + " sets devices/global_filter: diskseal's filter for the OS volume would replace it "
                                   "(merging with it is not supported yet)";
      if (auto v = ValueOf(s, "use_devicesfile"); v && *v != "0")
        return std::string(file) + " sets devices/use_devicesfile = " + std::string(*v) +
               ": LVM would ignore the encrypted OS volume's mapping (a devices file is not supported yet)";
    }
  }
  return "";
}

std::string MachineLvmFilterProblem(Env& env, const MachineRoot& root) {
  std::string text[2];
  const char* names[2] = {"lvm/lvm.conf", "lvm/lvmlocal.conf"};
  for (int i = 0; i < 2; ++i) {
    const std::string path = root.Etc(names[i]);
    if (!env.Exists(path)) continue;
    auto t = env.ReadFile(path, 1 << 20);
    if (!t.ok()) return path + ": cannot be read: " + t.status().message();
    text[i] = std::move(*t);
  }
  return LvmFilterProblem(text[0], text[1]);
}

Status ApplyEtcEdit(Env& env, const MachineRoot& root, const std::string& file,
                    const std::function<std::string(std::string_view)>& edit) {
  const std::string path = root.Etc(file), backup = path + ".diskseal.bak";
  std::string before;
  if (env.Exists(path)) {
    DS_ASSIGN_OR_RETURN(before, env.ReadFile(path, 1 << 20));
  }
  // The backup is the file before diskseal's first edit; later runs (and resumed steps) must not
  // overwrite it with a file diskseal already changed.
  if (!env.Exists(backup)) DS_RETURN_IF_ERROR(env.WriteFileAtomic(backup, before, 0644));
  const std::string after = edit(before);
  if (after == before && env.Exists(path)) return Status::Ok();
  return env.WriteFileAtomic(path, after, 0644);
}

}  // namespace ds::machine

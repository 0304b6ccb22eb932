// Captured machine trees for tests of discovery, doctor, status and enable: a TempDir holding
// the files a real machine has (proc/self/mountinfo, sys/class/block/..., etc/fstab, dev/<name>
// images with real signatures, proc/<pid>/...), written the way the kernel writes them.
// Not thread-safe; one tree per test.
#pragma once

#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <set>
#include <string>
#include <vector>

#include "machine/discovery.h"
#include "testlib.h"
#include "util/bytes.h"

namespace ds::machine::test {

struct BlockSpec {
  std::string devno;  // "8:17"
  uint64_t size_bytes = 1 << 30;
  bool partition = false;
  std::vector<std::string> holders = {}, slaves = {};
  std::string dm_name = "", dm_uuid = "";
};

class MachineTree {
 public:
  MachineTree() {
    File("proc/self/mountinfo", "");
    Dir("sys/class/block");
    Dir("etc");
  }
  const std::string& dir() const { return tmp_.path(); }
  std::string operator/(const std::string& rel) const { return tmp_ / rel; }

  // The root to hand to Discover/RunDoctor; writes the mount table collected so far.
  MachineRoot Root() {
    ds::test::WriteFile(tmp_ / "proc/self/mountinfo", mountinfo_);
    MachineRoot r;
    r.dir = dir();
    r.env = PosixEnv();
    return r;
  }

  void Dir(const std::string& rel) { MkdirP(tmp_ / rel); }
  void File(const std::string& rel, const std::string& data) {
    std::string p = tmp_ / rel;
    MkdirP(p.substr(0, p.rfind('/')));
    ds::test::WriteFile(p, data);
  }
  void Symlink(const std::string& rel, const std::string& target) {
    std::string p = tmp_ / rel;
    MkdirP(p.substr(0, p.rfind('/')));
    ::unlink(p.c_str());
    if (::symlink(target.c_str(), p.c_str()) != 0) throw std::runtime_error("symlink " + p);
  }

  // One mountinfo line; `mountpoint` and `source` are escaped as the kernel escapes them.
  void Mount(const std::string& devno, const std::string& mountpoint, const std::string& fstype,
             const std::string& source, const std::string& root = "/",
             const std::string& options = "rw,relatime") {
    int id = next_mount_id_++;
    mountinfo_ += std::to_string(id) + " " + std::to_string(id == 21 ? 1 : 21) + " " + devno + " " +
                  Escape(root) + " " + Escape(mountpoint) + " " + options + " shared:" +
                  std::to_string(id) + " - " + fstype + " " + Escape(source) + " rw\n";
  }

  void Block(const std::string& name, const BlockSpec& s) {
    std::string base = "sys/class/block/" + name;
    File(base + "/dev", s.devno + "\n");
    File(base + "/size", std::to_string(s.size_bytes / 512) + "\n");
    File(base + "/ro", "0\n");
    if (s.partition) File(base + "/partition", "1\n");
    Dir(base + "/holders");
    Dir(base + "/slaves");
    for (const auto& h : s.holders) File(base + "/holders/" + h, "");
    for (const auto& sl : s.slaves) File(base + "/slaves/" + sl, "");
    if (!s.dm_name.empty()) {
      File(base + "/dm/name", s.dm_name + "\n");
      File(base + "/dm/uuid", s.dm_uuid + "\n");
    }
  }
  // dev/<name>: the device's first bytes (an image the probe reads as the device).
  void Device(const std::string& name, const Bytes& first_bytes) {
    File("dev/" + name, std::string(first_bytes.begin(), first_bytes.end()));
  }

 private:
  void MkdirP(const std::string& p) {
    if (!made_.insert(p).second) return;  // thousands of /proc entries share their parents
    for (size_t i = 1; i <= p.size(); ++i)
      if (i == p.size() || p[i] == '/') ::mkdir(p.substr(0, i).c_str(), 0755);
  }
  static std::string Escape(const std::string& s) {
    std::string out;
    for (char c : s) {
      if (c == ' ' || c == '\t' || c == '\n' || c == '\\') {
        char buf[5];
        std::snprintf(buf, sizeof buf, "\\%03o", unsigned(uint8_t(c)));
        out += buf;
      } else {
        out.push_back(c);
      }
    }
    return out;
  }
  ds::test::TempDir tmp_;
  std::set<std::string> made_;
  std::string mountinfo_;
  int next_mount_id_ = 21;
};

// First bytes of devices with real on-disk signatures (the fields blkid reads).
inline void PutUuid(Bytes& b, size_t at, uint8_t seed) {
  for (int i = 0; i < 16; ++i) b[at + size_t(i)] = uint8_t(seed + i);
}
inline void Put(Bytes& b, size_t at, std::string_view s) { std::memcpy(b.data() + at, s.data(), s.size()); }

inline Bytes Ext4Image(uint8_t uuid_seed, const std::string& label) {
  Bytes b(8192, 0);
  b[1024 + 56] = 0x53;
  b[1024 + 57] = 0xEF;
  b[1024 + 92] = 0x04;         // has_journal
  b[1024 + 96] = 0x40 | 0x02;  // extents, filetype
  PutUuid(b, 1024 + 104, uuid_seed);
  Put(b, 1024 + 120, label);
  return b;
}
inline Bytes XfsImage(uint8_t uuid_seed, const std::string& label) {
  Bytes b(8192, 0);
  Put(b, 0, "XFSB");
  PutUuid(b, 32, uuid_seed);
  Put(b, 108, label);
  return b;
}
inline Bytes SwapImage(uint8_t uuid_seed) {
  Bytes b(8192, 0);
  Put(b, 4096 - 10, "SWAPSPACE2");
  PutUuid(b, 1024 + 12, uuid_seed);
  return b;
}
inline Bytes Luks2Image(const std::string& uuid) {
  Bytes b(8192, 0);
  Put(b, 0, "LUKS\xba\xbe");
  b[7] = 2;
  Put(b, 168, uuid);
  return b;
}
// An LVM2 physical volume label in sector 1 (where pvcreate puts it), pv_header right after.
inline Bytes LvmPvImage(const std::string& uuid32) {
  Bytes b(8192, 0);
  Put(b, 512, "LABELONE");
  b[512 + 20] = 32;  // offset_xl
  Put(b, 512 + 24, "LVM2 001");
  Put(b, 512 + 32, uuid32);
  return b;
}

}  // namespace ds::machine::test

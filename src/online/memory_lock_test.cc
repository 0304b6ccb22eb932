// The lock decision of an online run (online/memory_lock.h), from /proc texts as the kernel writes
// them: a data volume (binary elsewhere) locks on fault; root on the volume, on an LV stacked on
// it, on btrfs, on an overlay, in a loop image, or with swap active locks everything.
#include "online/memory_lock.h"

#include <sys/mman.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <cstdio>
#include <sstream>
#include <vector>
#include <set>

#include <gtest/gtest.h>

#include "io/block_device.h"

namespace ds::online {
namespace {

// The volume's mapping is 253:0; an LV on it 253:3; the system disk's root partition 254:1;
// a loop device 7:0.
const char kMountinfo[] =
    "21 26 0:20 / /proc rw,relatime - proc proc rw\n"
    "25 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw\n"
    "30 25 0:25 / /run rw,nosuid shared:5 - tmpfs tmpfs rw,size=100k\n"
    "31 25 0:31 / /srv rw,relatime shared:9 - btrfs /dev/vdb rw\n"
    "32 25 0:40 / /var/lib/docker/overlay2/x/merged rw - overlay overlay rw,lowerdir=/a,upperdir=/b\n"
    "33 25 0:41 / /mnt/nfs rw - nfs4 server:/export rw\n"
    "34 25 0:42 / /opt rw - xfs /dev/mapper/vol rw\n";
const char kNoSwap[] = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n";

std::string MapsWith(const std::string& dev_hex) {
  return "5614a5112000-5614a5114000 r--p 00000000 " + dev_hex + " 247134       /usr/bin/diskseal\n"
         "5614a6000000-5614a6021000 rw-p 00000000 00:00 0                    [heap]\n"
         "7f0000000000-7f0000100000 r-xp 00000000 fe:01 1234        /usr/lib/x86_64-linux-gnu/libc.so.6\n"
         "7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                    [stack]\n";
}

LockInputs Inputs(const std::string& maps, const std::string& swaps = kNoSwap) {
  LockInputs in;
  in.maps = maps;
  in.mountinfo = kMountinfo;
  in.swaps = swaps;
  in.may_wait_for_volume = [](dev_t d) {
    static const std::set<dev_t> stacked = {makedev(253, 0), makedev(253, 3)};
    return stacked.count(d) > 0 || major(d) == 7;
  };
  in.block_device = [](const std::string& path) -> std::optional<dev_t> {
    if (path == "/dev/vda1") return makedev(254, 1);
    if (path == "/dev/vdb") return makedev(254, 16);
    if (path == "/dev/mapper/vol") return makedev(253, 0);
    return std::nullopt;
  };
  return in;
}

TEST(MemoryLock, BinaryOnAnotherDiskLocksOnFault) {
  const LockDecision d = DecideLockScope(Inputs(MapsWith("fe:01")));
  EXPECT_EQ(d.scope, LockScope::kOnFault) << d.why;
}

TEST(MemoryLock, BinaryInMemoryBackedFilesystemLocksOnFault) {
  // The guest's initramfs (rootfs, 0:19) and a tmpfs (0:25, maps writes 00:19 in hex); a device
  // number no mount has is distrusted.
  LockInputs in = Inputs(MapsWith("00:13"));
  EXPECT_EQ(DecideLockScope(in).scope, LockScope::kAll);
  in.mountinfo = "2 1 0:19 / / rw - rootfs rootfs rw\n" + in.mountinfo;
  EXPECT_EQ(DecideLockScope(in).scope, LockScope::kOnFault) << DecideLockScope(in).why;
  EXPECT_EQ(DecideLockScope(Inputs(MapsWith("00:19"))).scope, LockScope::kOnFault);
}

TEST(MemoryLock, RootOnTheVolumeOrStackedOnItLocksEverything) {
  // Root directly on the mapping (fd:00 = 253:0), on an LV of a VG whose PV is the mapping.
  for (const char* dev : {"fd:00", "fd:03"}) {
    const LockDecision d = DecideLockScope(Inputs(MapsWith(dev)));
    EXPECT_EQ(d.scope, LockScope::kAll) << dev;
    EXPECT_NE(d.why.find("on the volume"), std::string::npos) << d.why;
  }
  // A loop image (its backing file may be on the volume).
  EXPECT_EQ(DecideLockScope(Inputs(MapsWith("07:00"))).scope, LockScope::kAll);
}

TEST(MemoryLock, FilesystemsWithoutTheirOwnDeviceAreResolvedOrDistrusted) {
  EXPECT_EQ(DecideLockScope(Inputs(MapsWith("00:1f"))).scope, LockScope::kAll);  // btrfs: 0:31
  EXPECT_EQ(DecideLockScope(Inputs(MapsWith("00:28"))).scope, LockScope::kAll);  // overlay: 0:40
  EXPECT_EQ(DecideLockScope(Inputs(MapsWith("00:29"))).scope, LockScope::kAll);  // nfs4: 0:41
  // xfs on the volume reports the volume's device number in maps, but were it anonymous, its
  // source names the mapping.
  EXPECT_EQ(DecideLockScope(Inputs(MapsWith("00:2a"))).scope, LockScope::kAll);  // 0:42 on vol
}

TEST(MemoryLock, ActiveSwapOrUnreadableInputLocksEverything) {
  const std::string swaps = std::string(kNoSwap) + "/dev/zram0  partition\t1048572\t0\t100\n";
  EXPECT_EQ(DecideLockScope(Inputs(MapsWith("fe:01"), swaps)).scope, LockScope::kAll);
  EXPECT_EQ(DecideLockScope(Inputs("garbage\n")).scope, LockScope::kAll);
  EXPECT_EQ(DecideLockScope(Inputs("7f0-7f1 r--p 0 zz 12 /x\n")).scope, LockScope::kAll);
  LockInputs none = Inputs(MapsWith("fe:01"));
  none.may_wait_for_volume = nullptr;  // nothing known of the stack
  EXPECT_EQ(DecideLockScope(none).scope, LockScope::kAll);
}

TEST(MemoryLock, TheRunsOwnCodeIsLockedWholeTheVaultsLibrariesAreNot) {
  const std::string exe = "/usr/sbin/diskseal";
  EXPECT_TRUE(RunsFrom(exe, exe));
  EXPECT_TRUE(RunsFrom("/usr/lib/x86_64-linux-gnu/libcrypto.so.3", exe));
  EXPECT_TRUE(RunsFrom("/usr/lib/x86_64-linux-gnu/libc.so.6", exe));
  EXPECT_TRUE(RunsFrom("/usr/lib/x86_64-linux-gnu/libstdc++.so.6.0.30", exe));
  EXPECT_TRUE(RunsFrom("/usr/lib64/ld-linux-x86-64.so.2", exe));
  EXPECT_FALSE(RunsFrom("/usr/lib/x86_64-linux-gnu/libcurl.so.4.8.0", exe));
  EXPECT_FALSE(RunsFrom("/usr/lib/x86_64-linux-gnu/libgnutls.so.30", exe));
  EXPECT_FALSE(RunsFrom("/usr/lib/x86_64-linux-gnu/libsqlite3.so.0", exe));
  EXPECT_FALSE(RunsFrom("[heap]", exe));
  EXPECT_FALSE(RunsFrom("/usr/bin/other", exe));
}

// Pages of [start, end) in memory (mincore).
size_t Resident(uintptr_t start, uintptr_t end) {
  const size_t page = size_t(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> v((end - start + page - 1) / page);
  if (mincore(reinterpret_cast<void*>(start), end - start, v.data()) != 0) return 0;
  size_t n = 0;
  for (unsigned char c : v) n += c & 1;
  return n;
}

TEST(MemoryLock, OnFaultLocksTheRunsCodeWholeAndLittleElse) {
  // The real calls on this process (root here): every page of the C library's code is in memory
  // afterwards; a buffer mapped after the lock and never touched has none.
#ifdef __SANITIZE_ADDRESS__
  GTEST_SKIP() << "AddressSanitizer makes mlock and mlockall do nothing";
#endif
  ASSERT_EQ(LockMemory(*PosixEnv(), {LockScope::kOnFault, "test"}), 0);
  const size_t len = 16u << 20;
  void* buf = mmap(nullptr, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(buf, MAP_FAILED);
  const size_t buf_resident = Resident(uintptr_t(buf), uintptr_t(buf) + len);
  size_t libc_pages = 0, libc_resident = 0;
  auto maps = PosixEnv()->ReadFile("/proc/self/maps", 16u << 20);
  ASSERT_TRUE(maps.ok());
  std::istringstream in(*maps);
  for (std::string line; std::getline(in, line);) {
    unsigned long long a = 0, b = 0;
    char perms[5] = {};
    if (line.find("/libc.so") == std::string::npos || std::sscanf(line.c_str(), "%llx-%llx %4s", &a, &b, perms) != 3 ||
        perms[2] != 'x')
      continue;
    libc_pages += (b - a) / size_t(sysconf(_SC_PAGESIZE));
    libc_resident += Resident(a, b);
  }
  munlockall();
  munmap(buf, len);
  EXPECT_GT(libc_pages, 0u);
  EXPECT_EQ(libc_resident, libc_pages) << "the C library's code is not all in memory";
  EXPECT_EQ(buf_resident, 0u) << "an untouched buffer was made resident";
}

TEST(MemoryLock, ThisProcessOnTheHostIsDecided) {
  // The real gatherer on the host: no device-mapper here, so a device number nothing uses stands
  // for the volume; the test binary lives on an ordinary filesystem, so the answer depends on
  // this machine's swap. Whatever it is, it must come with a reason.
  const LockDecision d = LockScopeFor(*PosixEnv(), makedev(4095, 4095));
  EXPECT_FALSE(d.why.empty());
}

}  // namespace
}  // namespace ds::online

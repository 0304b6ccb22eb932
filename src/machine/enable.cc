#include "machine/enable.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <climits>
#include <cstdlib>
#include <ctime>
#include <map>
#include <optional>

#include "dm/dm.h"
#include "dm/volume_table.h"
#include "engine/binding.h"
#include "engine/engine.h"
#include "fuse/daemon.h"
#include "fuse/file_server.h"
#include "fuse/run_dir.h"
#include "io/device_claim.h"
#include "luks2/header_io.h"
#include "machine/config.h"
#include "machine/mounts.h"
#include "machine/state.h"
#include "online/adopt.h"
#include "online/dm_online.h"
#include "volume/signature.h"
#include "vault/escrow.h"
#include "engine/volume_escrow.h"
#include "inplace/inplace.h"

namespace ds::machine {

namespace {

std::string Canonical(const std::string& path) {
  char buf[PATH_MAX];
  return ::realpath(path.c_str(), buf) ? std::string(buf) : path;
}

bool Selected(const EnableOptions& o, const std::string& mountpoint) {
  if (o.only.empty()) return true;
  for (const auto& m : o.only)
    if (Canonical(m) == mountpoint || m == mountpoint) return true;
  return false;
}

bool InDisableFlow(Step s) { return s >= Step::kDisabling && s < Step::kDisabled; }

// The key file as written by the planned step, into locked memory (never a std::string).
Result<SecureBuffer> ReadKeyFile(Env& env, const std::string& path) {
  DS_ASSIGN_OR_RETURN(auto f, env.Open(path, OpenOptions{}));
  if (f->Size() == 0 || f->Size() > 4096) return Corrupt(path + ": not a diskseal key file");
  SecureBuffer key(f->Size());
  DS_RETURN_IF_ERROR(f->ReadAt(0, key.span()));
  return key;
}

// One run over the selected volumes: owns nothing but references to the caller's objects.
class Runner {
 public:
  Runner(Env& env, const EnableOptions& o, StateDir& state, const MachineLock& lock)
      : env_(env), o_(o), state_(state), lock_(lock), run_(env, o.run_dir) {}

  // --- enable ----------------------------------------------------------------------------------

  // Online where the kernel has device-mapper (README "Online"): the filesystem moves onto its
  // mapping with one remount of seconds and stays mounted while the data is encrypted.
  bool Online() const { return !o_.userspace && !o_.offline && dm::Available(); }

  Status Enable(VolumeRecord& r) {
    if (r.os) return EnableOs(r);
    // A volume started offline (unmounted first) finishes offline.
    if (Online() && r.step != Step::kUnmounted) return EnableOnline(r);
    if (r.step == Step::kPlanned) {
      // The passphrase exists on disk before anything irreversible: a crash after the header is
      // placed must find the key that opens it.
      if (!env_.Exists(r.key_file)) {
        DS_ASSIGN_OR_RETURN(SecureBuffer pass, vault::GeneratePassphrase());
        DS_RETURN_IF_ERROR(env_.WriteFileAtomic(r.key_file, pass.view(), 0400));
      }
      DS_RETURN_IF_ERROR(UnmountIfFrom(r.mountpoint, {r.device}));
      DS_RETURN_IF_ERROR(Advance(r, Step::kUnmounted));
    }
    DS_ASSIGN_OR_RETURN(SecureBuffer pass, ReadKeyFile(env_, r.key_file));
    const std::string tmp = r.header + ".diskseal-new";
    // One owner per device (io/device_claim.h) from the header's making to the end of the
    // encryption, and through the view started below; taken once the volume is unmounted.
    std::optional<DeviceClaim> claim;
    if (r.step < Step::kEncrypted) {
      DS_ASSIGN_OR_RETURN(DeviceClaim c, DeviceClaim::Acquire(r.device, {ClaimMode::kExclusive, true, {}}));
      claim.emplace(std::move(c));
    }
    if (r.step == Step::kUnmounted) {
      if (env_.Exists(r.header)) {
        // A crash between the rename and the record: the header is in place already.
        DS_RETURN_IF_ERROR(Advance(r, Step::kHeaderPlaced));
      } else {
        DS_RETURN_IF_ERROR(FormatAndEscrow(r, tmp));
        DS_RETURN_IF_ERROR(Advance(r, Step::kEscrowed));
      }
    }
    if (r.step == Step::kEscrowed) DS_RETURN_IF_ERROR(PlaceHeader(r, tmp));
    if (r.step == Step::kHeaderPlaced || r.step == Step::kEncrypting) {
      DS_RETURN_IF_ERROR(Encrypt(r, pass));
    }
    // From here each step checks the kernel's view, so a finished volume whose userspace view was
    // lost (reboot) is opened and mounted again by the next run.
    DS_RETURN_IF_ERROR(EnsureOpen(r, pass));
    if (r.step < Step::kOpened) DS_RETURN_IF_ERROR(Advance(r, Step::kOpened));
    DS_RETURN_IF_ERROR(EnsureMounted(r, Plaintext(r)));
    if (r.step < Step::kMounted) DS_RETURN_IF_ERROR(Advance(r, Step::kMounted));
    if (r.step < Step::kConfigured) {
      DS_RETURN_IF_ERROR(Configure(r));
      DS_RETURN_IF_ERROR(Advance(r, Step::kConfigured));
    }
    return Status::Ok();
  }

  // planned -> (key file) escrowed -> header-placed -> [remount onto /dev/mapper/NAME, crypttab
  // and fstab] encrypting (online) -> encrypted -> configured. Until the header is placed the
  // plaintext filesystem is untouched and mounted; from the remount on, boot opens the mapping
  // (crypttab with header=, the in-progress header opens as it is) and `resume --all` carries on.
  Status EnableOnline(VolumeRecord& r) {
    const std::string tmp = r.header + ".diskseal-new";
    if (r.step == Step::kPlanned) DS_RETURN_IF_ERROR(FormatMounted(r, tmp));
    DS_ASSIGN_OR_RETURN(SecureBuffer pass, ReadKeyFile(env_, r.key_file));
    if (r.step == Step::kEscrowed) DS_RETURN_IF_ERROR(PlaceHeader(r, tmp));
    DS_ASSIGN_OR_RETURN(std::string adopt, ToAdopt(r));
    if (!adopt.empty() && (r.step == Step::kHeaderPlaced || r.step == Step::kEncrypting)) {
      // Mounted from a device-mapper device (an LVM logical volume): no remount at all
      // (online/adopt.h). The raw copy first (nothing the filesystem sees changes), then the
      // boot configuration before any data block is touched, then the engine, which switches
      // the device onto the header's table under its guardian.
      DS_RETURN_IF_ERROR(online::PrepareRaw(r.device, adopt));
      *o_.log << r.mountpoint << ": stays mounted from " << r.device << " (no remount): /dev/mapper/" << adopt
              << " becomes the volume's mapping over " << online::RawPath(adopt) << "\n";
      DS_RETURN_IF_ERROR(Configure(r));
      DS_ASSIGN_OR_RETURN(DeviceClaim claim, DeviceClaim::Acquire(online::RawPath(adopt),
                                                                  {ClaimMode::kExclusive, true,
                                                                   online::MappingHolders(adopt)}));
      DS_RETURN_IF_ERROR(Encrypt(r, pass, adopt));
    } else if (r.step == Step::kHeaderPlaced || r.step == Step::kEncrypting) {
      // The one interruption: unmount the plaintext device (refused, naming who holds it, while
      // busy: nothing has changed then), open the mapping, mount it at the same place.
      DS_ASSIGN_OR_RETURN(std::string src, MountedSource(r.mountpoint));
      if (!src.empty() && Canonical(src) == Canonical(r.device)) {
        *o_.log << r.mountpoint << ": moving onto /dev/mapper/" << r.name << " (one remount)\n";
        DS_RETURN_IF_ERROR(UnmountFs(r.mountpoint));
      }
      DS_RETURN_IF_ERROR(EnsureOpen(r, pass));
      DS_RETURN_IF_ERROR(EnsureMounted(r, Plaintext(r)));
      DS_RETURN_IF_ERROR(Configure(r));
      // The device is held by its own mapping now; this run is its one owner.
      DS_ASSIGN_OR_RETURN(DeviceClaim claim, DeviceClaim::Acquire(r.device, {ClaimMode::kExclusive, true,
                                                                             online::MappingHolders(r.name)}));
      DS_RETURN_IF_ERROR(Encrypt(r, pass));
    }
    // An adopted device is the mapping itself (until the next boot opens /dev/mapper/NAME).
    DS_ASSIGN_OR_RETURN(bool adopted, AdoptedDevice(r));
    if (!adopted) DS_RETURN_IF_ERROR(EnsureOpen(r, pass));
    DS_RETURN_IF_ERROR(EnsureMounted(r, Plaintext(r)));
    if (r.step < Step::kConfigured) {
      DS_RETURN_IF_ERROR(Configure(r));
      DS_RETURN_IF_ERROR(Advance(r, Step::kConfigured));
    }
    return Status::Ok();
  }

  // planned -> escrowed for a volume that stays mounted: the key file first (a crash after the
  // header is placed must find the key that opens it), then the header made and escrowed as
  // `tmp`; a header already in place is a crash between its rename and the record.
  Status FormatMounted(VolumeRecord& r, const std::string& tmp) {
    if (!env_.Exists(r.key_file)) {
      DS_ASSIGN_OR_RETURN(SecureBuffer pass, vault::GeneratePassphrase());
      DS_RETURN_IF_ERROR(env_.WriteFileAtomic(r.key_file, pass.view(), 0400));
    }
    if (env_.Exists(r.header)) return Advance(r, Step::kHeaderPlaced);
    DS_RETURN_IF_ERROR(FormatAndEscrow(r, tmp, true));
    return Advance(r, Step::kEscrowed);
  }

  // --- the OS volume (enable.h) ----------------------------------------------------------------

  // Root cannot be unmounted: its mapping comes from the initramfs at the next boot, and the
  // encryption runs once / is on it (online, as any mounted volume).
  Status EnableOs(VolumeRecord& r) {
    const std::string tmp = r.header + ".diskseal-new";
    if (r.step == Step::kPlanned) {
      const std::string dir = r.header.substr(0, r.header.rfind('/'));
      if (::mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) return PosixError(dir, errno);
      DS_RETURN_IF_ERROR(FormatMounted(r, tmp));
    }
    if (r.step == Step::kEscrowed) {
      // The initramfs learns of the volume before its header exists where it looks: a boot in
      // between (a power cut) finds no header and boots root as it is, still plaintext.
      Status boot = InstallBootConfig(r);
      if (!boot.ok()) {
        // Nothing changed: no header in place, the previous initramfs configuration back. The
        // next run starts over (a new header, escrowed again).
        (void)env_.Remove(tmp);
        (void)Advance(r, Step::kPlanned);
        return boot;
      }
      DS_RETURN_IF_ERROR(PlaceHeader(r, tmp));
    }
    if (r.step == Step::kHeaderPlaced || r.step == Step::kEncrypting) {
      DS_RETURN_IF_ERROR(ConfigureOs(r));
      std::string src;
      DS_ASSIGN_OR_RETURN(bool on_mapping, RootOnMapping(r, src));
      if (!on_mapping) {
        restart_pending_ = true;
        *o_.log << "/: " << r.device << " is ready to be encrypted; restart the machine (VMRestartPending): the "
                << "initramfs opens it as /dev/mapper/" << r.name << " and diskseal-resume.service encrypts it "
                << "online while the machine runs\n";
        return Status::Ok();
      }
      DS_ASSIGN_OR_RETURN(SecureBuffer pass, ReadKeyFile(env_, r.key_file));
      DS_ASSIGN_OR_RETURN(DeviceClaim claim, DeviceClaim::Acquire(r.device, {ClaimMode::kExclusive, true,
                                                                             online::MappingHolders(r.name)}));
      DS_ASSIGN_OR_RETURN(bool adopted, AdoptPreparedRoot(r, pass));
      if (!adopted) return Status::Ok();  // restart pending: said why
      DS_RETURN_IF_ERROR(Encrypt(r, pass));
    }
    if (r.step == Step::kEncrypted) DS_RETURN_IF_ERROR(Advance(r, Step::kConfigured));
    return Status::Ok();
  }

  // The reverse, online: root is decrypted under its mapping while the machine runs; then the
  // boot configuration goes (initramfs rebuilt without it, fstab and crypttab as they were), and
  // the next boot mounts the plain partition. Until then / stays on the mapping, now linear.
  //   configured -> decrypting -> decrypted -> [boot configuration removed] plain-mounted
  //   -> [header and key removed] disabled
  Status DisableOs(VolumeRecord& r) {
    if (r.step == Step::kConfigured || r.step == Step::kDecrypting) {
      std::string src;
      DS_ASSIGN_OR_RETURN(bool on_mapping, RootOnMapping(r, src));
      if (!on_mapping)
        return Busy("/: not on /dev/mapper/" + r.name + " (it is mounted from " + (src.empty() ? "nothing" : src) +
                    "): the OS volume is decrypted while it runs on its mapping; restart the machine first");
      DS_ASSIGN_OR_RETURN(SecureBuffer pass, ReadKeyFile(env_, r.key_file));
      DS_ASSIGN_OR_RETURN(DeviceClaim claim, DeviceClaim::Acquire(r.device, {ClaimMode::kExclusive, true,
                                                                             online::MappingHolders(r.name)}));
      DS_RETURN_IF_ERROR(InitDecrypt(r, pass));
      DS_RETURN_IF_ERROR(Decrypt(r, pass));
    }
    if (r.step == Step::kDecrypted) {
      if (env_.Exists(InitramfsConf())) {
        // On failure the data is plaintext and the old initramfs opens it as a linear mapping:
        // nothing lost, and the next run tries again.
        std::vector<BootFile> files = {{InitramfsConf(), std::nullopt}};
        if (r.lvm) {
          // LVM may use the (plaintext again) physical volume itself from the next boot on.
          DS_ASSIGN_OR_RETURN(std::string local, ReadEtc("lvm/lvmlocal.conf"));
          std::string without = WithoutLvmRejectFilter(local);
          files.push_back({o_.root.Etc("lvm/lvmlocal.conf"),
                           without.find_first_not_of(" \t\n") == std::string::npos ? std::nullopt
                                                                                   : std::optional<std::string>(without)});
        }
        Status off = SwapBootConfig(files);
        if (!off.ok())
          return Status(off.code(), "/: the OS volume is decrypted, but the initramfs could not be rebuilt (" + off.message() +
                                        "); run disable again");
      }
      DS_RETURN_IF_ERROR(ApplyEtcEdit(env_, o_.root, "crypttab", [&](std::string_view t) {
        return SetCrypttabLine(t, r.name, std::nullopt);
      }));
      if (r.fstab && !r.lvm) {
        const std::string line = FstabLine(*r.fstab);
        DS_RETURN_IF_ERROR(ApplyEtcEdit(env_, o_.root, "fstab", [&](std::string_view t) { return SetFstabLine(t, "/", line); }));
      }
      DS_RETURN_IF_ERROR(Advance(r, Step::kPlainMounted));
    }
    if (r.step == Step::kPlainMounted) {
      for (const auto& f : {r.key_file, r.header})
        if (env_.Exists(f)) DS_RETURN_IF_ERROR(env_.Remove(f));
      DS_RETURN_IF_ERROR(Advance(r, Step::kDisabled));
      *o_.log << "/: decrypted; / stays on the (now plain) mapping /dev/mapper/" << r.name
              << " until the next restart, which mounts " << r.device << " itself\n";
    }
    return Status::Ok();
  }

  // Whether / runs on the OS volume's mapping: mounted from it, or from an LVM logical volume
  // over it. Returns what / is mounted from in `src` for messages.
  Result<bool> RootOnMapping(const VolumeRecord& r, std::string& src) {
    DS_ASSIGN_OR_RETURN(src, MountedSource("/"));
    if (!src.empty() && Canonical(src) == Canonical("/dev/mapper/" + r.name)) return true;
    DS_ASSIGN_OR_RETURN(Machine m, Discover(o_.root));
    const Volume* os = m.os();
    return os && BuiltOn(m, *os, r.name);
  }

  // No reboot (README "The OS volume"): / is on diskseal's prepared linear mapping, which the
  // initramfs made 1:1 over the partition; it becomes the volume's mapping by a switch to the
  // header's table (online/dm_online.h). True when / is on the volume's mapping now (also when
  // it was the LUKS2 mapping already: a boot after the header was placed); false, with the reason
  // logged and the restart pending, when the prepared mapping is not one diskseal may switch.
  Result<bool> AdoptPreparedRoot(const VolumeRecord& r, const SecureBuffer& pass) {
    DS_ASSIGN_OR_RETURN(auto m, dm::Find(r.name));
    if (!m || !dm::IsPreparedLinear(m->uuid)) return true;
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(env_, r.device, r.header, true));
    DS_RETURN_IF_ERROR(engine::CheckBindingKeyless(env_, v, r.header));
    DS_ASSIGN_OR_RETURN(auto unlocked, v.UnlockAll(pass.span()));
    std::map<int, const SecureBuffer*> keys;
    for (auto& [digest, key] : unlocked) keys[digest] = &key;
    Status s = online::AdoptPreparedMapping(v, {&env_, Canonical(r.device), r.header}, r.name, keys, o_.hotzone_bytes);
    if (s.code() == Code::kBusy) {
      restart_pending_ = true;
      *o_.log << "/: " << s.message() << " (VMRestartPending)\n";
      return false;
    }
    DS_RETURN_IF_ERROR(s);
    *o_.log << "/: no restart needed: /dev/mapper/" << r.name << " (diskseal's linear mapping of " << r.device
            << ", made at boot) now has the table of its header; encrypting online\n";
    return true;
  }

  // Whether the last EnableOs stopped for the reboot.
  bool restart_pending() const { return restart_pending_; }

  // <etc>/diskseal/initramfs.conf (read by packaging/initramfs-tools at build and at boot), then
  // the initramfs rebuilt; on failure the previous configuration is put back.
  Status InstallBootConfig(const VolumeRecord& r) {
    DS_ASSIGN_OR_RETURN(Machine m, Discover(o_.root));
    const Volume* boot = m.boot();
    const Volume* os = m.os();
    if (!boot || !os || boot->mountpoint.empty()) return Unsupported("/: no separate /boot to hold the OS volume's header");
    const std::string bmp = boot->mountpoint == "/" ? "" : boot->mountpoint;
    if (r.header.rfind(bmp + "/", 0) != 0)
      return InvalidArgument(r.header + ": the OS volume's header must be on /boot (" + boot->dev + ")");
    auto fs_uuid = [&](const Volume* v) -> std::string {
      return v->block >= 0 ? m.blocks[size_t(v->block)].fs_uuid : std::string();
    };
    if (fs_uuid(boot).empty()) return Unsupported(boot->dev + ": /boot has no filesystem UUID to find it by at boot");
    if (o_.os.vault_url.empty() || o_.os.vault_token_file.empty())
      return InvalidArgument("/: the initramfs needs the vault's URL and a token file (--vault-token-file) to fetch the key at boot");
    std::vector<std::pair<std::string, std::string>> vars = {
        {"DS_NAME", r.name},
        {"DS_ROOT_DEV", BootDeviceSpec(env_, o_.root, r.device)},
        {"DS_ROOT_FS_UUID", r.lvm ? std::string() : fs_uuid(os)},
        {"DS_LVM", r.lvm ? "1" : ""},
        {"DS_BOOT_DEV", "UUID=" + fs_uuid(boot)},
        {"DS_BOOT_FSTYPE", boot->fstype},
        {"DS_HEADER", r.header.substr(bmp.size())},
        {"DS_VAULT_URL", o_.os.vault_url},
        {"DS_VAULT_TOKEN_FILE", o_.os.vault_token_file},
        {"DS_VAULT_CA", o_.os.vault_ca},
    };
    if (!o_.secret_prefix.empty()) vars.push_back({"DS_VAULT_SECRET", o_.secret_prefix + r.LuksUuid()});
    std::string text =
        "# Written by `diskseal enable --volume-type OS`: how the initramfs opens the OS volume at every\n"
        "# boot (/usr/share/initramfs-tools/scripts/local-top/diskseal). Rebuild the initramfs after a change.\n";
    for (const auto& [k, v] : vars) {
      if (v.find_first_of("'\n") != std::string::npos) return InvalidArgument(k + ": " + v + ": a quote or newline cannot be written");
      if (!v.empty()) text += k + "='" + v + "'\n";
    }
    std::vector<BootFile> files = {{InitramfsConf(), text}};
    if (r.lvm) {
      // LVM must never activate the root LV on the raw physical volume (it shows the same PV as
      // the mapping until its start is encrypted): its names are rejected by a filter that both
      // the initramfs (lvm2's hook copies /etc/lvm) and the running system read.
      std::vector<std::string> names;
      const std::string spec = BootDeviceSpec(env_, o_.root, r.device);
      if (spec.rfind("PARTUUID=", 0) == 0) names.push_back("/dev/disk/by-partuuid/" + spec.substr(9));
      names.push_back(r.device);
      DS_ASSIGN_OR_RETURN(std::string local, ReadEtc("lvm/lvmlocal.conf"));
      files.push_back({o_.root.Etc("lvm/lvmlocal.conf"), WithLvmRejectFilter(local, names)});
    }
    Status on = SwapBootConfig(files);
    if (!on.ok()) return Status(on.code(), "/: the initramfs could not be rebuilt, so nothing was changed (" + on.message() + ")");
    return Status::Ok();
  }

  // <etc>/<name>, "" when it does not exist.
  Result<std::string> ReadEtc(const std::string& name) {
    const std::string path = o_.root.Etc(name);
    if (!env_.Exists(path)) return std::string();
    return env_.ReadFile(path, 1 << 20);
  }

  std::string InitramfsConf() const {
    return o_.os.initramfs_conf.empty() ? o_.root.Etc("diskseal/initramfs.conf") : o_.os.initramfs_conf;
  }

  // A file of the boot configuration and what it becomes (nullopt: removed).
  struct BootFile {
    std::string path;
    std::optional<std::string> text;
  };

  // The boot configuration files set (the initramfs configuration; for root on LVM also
  // lvmlocal.conf) and the initramfs rebuilt, then synced: the boot that follows, even after a
  // power cut, runs with them. If the rebuild fails every file is put back as it was; the error
  // is the rebuild's (callers say what it means).
  Status SwapBootConfig(const std::vector<BootFile>& files) {
    if (!o_.os.rebuild_initramfs) return Unsupported("/: no way to rebuild the initramfs was given");
    std::vector<BootFile> before;
    auto restore = [&]() -> Status {
      Status first;
      for (const auto& b : before) {
        Status s = b.text ? env_.WriteFileAtomic(b.path, *b.text, 0644) : (env_.Exists(b.path) ? env_.Remove(b.path) : Status::Ok());
        if (!s.ok() && first.ok()) first = s.WithContext(b.path + " could not be restored");
      }
      return first;
    };
    for (const auto& f : files) {
      const std::string dir = f.path.substr(0, f.path.rfind('/'));
      if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST) return PosixError(dir, errno);
      BootFile old{f.path, std::nullopt};
      if (env_.Exists(f.path)) {
        DS_ASSIGN_OR_RETURN(old.text, env_.ReadFile(f.path, 1 << 20));
      }
      before.push_back(old);
      Status w = f.text ? env_.WriteFileAtomic(f.path, *f.text, 0644) : (old.text ? env_.Remove(f.path) : Status::Ok());
      if (!w.ok()) {
        (void)restore();  // the write's error is the one to report
        return w;
      }
    }
    const bool on = files.front().text.has_value();
    *o_.log << "/: rebuilding the initramfs " << (on ? "with" : "without") << " diskseal's boot configuration ("
            << files.front().path << ")\n";
    Status built = o_.os.rebuild_initramfs(*o_.log);
    if (built.ok()) {
      ::sync();
      return Status::Ok();
    }
    Status back = restore();
    return Status(built.code(), built.message() + (back.ok() ? "" : "; " + back.message()));
  }

  // fstab mounts / from the mapping; crypttab names it (noauto: the initramfs opens it, not
  // systemd-cryptsetup). Idempotent.
  Status ConfigureOs(const VolumeRecord& r) {
    const std::string ct = r.name + " " + EscapeField(BootDeviceSpec(env_, o_.root, r.device)) + " none luks,header=" +
                           EscapeField(r.header) + ",noauto";
    DS_RETURN_IF_ERROR(ApplyEtcEdit(env_, o_.root, "crypttab", [&](std::string_view t) {
      return SetCrypttabLine(t, r.name, ct);
    }));
    // On LVM, / stays the logical volume (now over the mapping): its fstab line is right as it is.
    if (!r.fstab || r.lvm) return Status::Ok();
    FstabEntry e = *r.fstab;
    e.spec = "/dev/mapper/" + r.name;
    return ApplyEtcEdit(env_, o_.root, "fstab", [&](std::string_view t) { return SetFstabLine(t, "/", FstabLine(e)); });
  }

  // escrowed -> header-placed: the escrowed temp header goes in place (a rename: the header file
  // either does not exist or tells the truth).
  Status PlaceHeader(VolumeRecord& r, const std::string& tmp) {
    if (env_.Exists(tmp)) {
      DS_RETURN_IF_ERROR(inplace::PlaceHeader(env_, tmp, r.header, false));
    } else if (!env_.Exists(r.header)) {
      return Corrupt(r.header + ": neither the header nor its temp file exists after escrow; "
                     "the state directory was changed by hand");
    }
    return Advance(r, Step::kHeaderPlaced);
  }

  // encrypting -> encrypted: the engine (online when the mapping is live), then the final header
  // to the vault.
  // `adopted`: the adopted device-mapper device it runs under (online/adopt.h), or "".
  Status Encrypt(VolumeRecord& r, const SecureBuffer& pass, const std::string& adopted = "") {
    r.rate = Rate{};
    r.rate.pid = ::getpid();
    DS_RETURN_IF_ERROR(Advance(r, Step::kEncrypting));
    DS_RETURN_IF_ERROR(RunEngine(r, pass, "encrypt", adopted));
    DS_RETURN_IF_ERROR(EscrowFinalHeader(r, pass, adopted));
    r.rate = Rate{};
    return Advance(r, Step::kEncrypted);
  }

  // decrypting -> decrypted: the engine, online when the mapping is live.
  Status Decrypt(VolumeRecord& r, const SecureBuffer& pass, const std::string& adopted = "") {
    r.rate = Rate{};
    r.rate.pid = ::getpid();
    DS_RETURN_IF_ERROR(Advance(r, Step::kDecrypting));
    DS_RETURN_IF_ERROR(RunEngine(r, pass, "decrypt", adopted));
    r.rate = Rate{};
    return Advance(r, Step::kDecrypted);
  }

  // --- disable ---------------------------------------------------------------------------------

  // Where the volume's mapping is live, disable decrypts under it while the filesystem stays
  // mounted, and the one remount (mapping -> plain device) comes at the end.
  Result<bool> MappingLive(const VolumeRecord& r) {
    if (!Online()) return false;
    DS_ASSIGN_OR_RETURN(auto live, online::ActiveMapping(r.LuksUuid(), Canonical(r.device)));
    return live.has_value();
  }

  Status Disable(VolumeRecord& r) {
    DS_ASSIGN_OR_RETURN(std::string adopted, AdoptedName(r));
    if (!adopted.empty() && (r.step == Step::kConfigured || r.step == Step::kDecrypting)) {
      // Encrypted under the adopted device (online/adopt.h): decrypted under it, still mounted.
      DS_ASSIGN_OR_RETURN(SecureBuffer pass, ReadKeyFile(env_, r.key_file));
      DS_ASSIGN_OR_RETURN(DeviceClaim claim, DeviceClaim::Acquire(online::RawPath(adopted),
                                                                  {ClaimMode::kExclusive, true,
                                                                   online::MappingHolders(adopted)}));
      DS_RETURN_IF_ERROR(InitDecrypt(r, pass, adopted));
      DS_RETURN_IF_ERROR(Decrypt(r, pass, adopted));
    } else if (r.step == Step::kConfigured || r.step == Step::kDecrypting) {
      DS_ASSIGN_OR_RETURN(bool live, MappingLive(r));
      if (live) {
        DS_ASSIGN_OR_RETURN(SecureBuffer pass, ReadKeyFile(env_, r.key_file));
        DS_ASSIGN_OR_RETURN(DeviceClaim claim, DeviceClaim::Acquire(r.device, {ClaimMode::kExclusive, true,
                                                                               online::MappingHolders(r.name)}));
        DS_RETURN_IF_ERROR(InitDecrypt(r, pass));
        DS_RETURN_IF_ERROR(Decrypt(r, pass));
      }
    }
    if (r.step == Step::kConfigured) DS_RETURN_IF_ERROR(Advance(r, Step::kDisabling));
    DS_ASSIGN_OR_RETURN(SecureBuffer pass, ReadKeyFile(env_, r.key_file));
    if (r.step == Step::kDisabling) {
      DS_RETURN_IF_ERROR(UnmountIfFrom(r.mountpoint, {Plaintext(r), "/dev/mapper/" + r.name}));
      DS_RETURN_IF_ERROR(Close(r));
      DS_RETURN_IF_ERROR(Advance(r, Step::kClosed));
    }
    std::optional<DeviceClaim> claim;
    if (r.step == Step::kClosed || r.step == Step::kDecrypting) {
      DS_ASSIGN_OR_RETURN(DeviceClaim c, DeviceClaim::Acquire(r.device, {ClaimMode::kExclusive, true, {}}));
      claim.emplace(std::move(c));
      if (r.step == Step::kClosed) DS_RETURN_IF_ERROR(InitDecrypt(r, pass));
      DS_RETURN_IF_ERROR(Decrypt(r, pass));
    }
    if (r.step == Step::kDecrypted && !adopted.empty()) {
      // The adopted device gets its original table back: the filesystem never moved.
      DS_RETURN_IF_ERROR(online::Release(adopted));
      *o_.log << r.mountpoint << ": /dev/mapper/" << adopted << " has its original table again (no remount)\n";
      DS_RETURN_IF_ERROR(Advance(r, Step::kPlainMounted));
    }
    if (r.step == Step::kDecrypted) {
      DS_ASSIGN_OR_RETURN(std::string src, MountedSource(r.mountpoint));
      DS_ASSIGN_OR_RETURN(auto mapping, dm::Find(r.name));
      // Released already (a run stopped before its record): mounted from the plain device.
      if (!mapping && !src.empty() && Canonical(src) == Canonical(r.device)) DS_RETURN_IF_ERROR(Advance(r, Step::kPlainMounted));
    }
    if (r.step == Step::kDecrypted) {
      // Online: the plaintext is still mounted through the (now linear) mapping; the remount.
      DS_RETURN_IF_ERROR(UnmountIfFrom(r.mountpoint, {"/dev/mapper/" + r.name, Plaintext(r)}));
      DS_RETURN_IF_ERROR(Close(r));
      DS_RETURN_IF_ERROR(EnsureMounted(r, r.device));
      DS_RETURN_IF_ERROR(Advance(r, Step::kPlainMounted));
    }
    if (r.step == Step::kPlainMounted) {
      DS_RETURN_IF_ERROR(Unconfigure(r));
      // The data is plaintext again: the key and the header protect nothing any more.
      for (const std::string& f : {r.key_file, r.header})
        if (env_.Exists(f)) DS_RETURN_IF_ERROR(env_.Remove(f));
      DS_RETURN_IF_ERROR(Advance(r, Step::kDisabled));
    }
    return Status::Ok();
  }

  // What the plaintext is mounted from once open.
  std::string Plaintext(const VolumeRecord& r) const {
    if (!r.loop.empty()) return r.loop;
    auto adopted = AdoptedName(r);
    if (adopted.ok() && !adopted->empty()) return "/dev/mapper/" + *adopted;
    return "/dev/mapper/" + r.name;
  }

  // The adopted device-mapper device this volume is mounted from and runs under (online/adopt.h:
  // its raw copy exists), or "".
  Result<std::string> AdoptedName(const VolumeRecord& r) const {
    if (r.os || !dm::Available()) return std::string();
    DS_ASSIGN_OR_RETURN(auto name, online::ForeignMappingAt(Canonical(r.device)));
    if (!name) return std::string();
    DS_ASSIGN_OR_RETURN(bool adopted, online::Adopted(*name));
    return adopted ? *name : std::string();
  }
  Result<bool> AdoptedDevice(const VolumeRecord& r) const {
    DS_ASSIGN_OR_RETURN(std::string name, AdoptedName(r));
    return !name.empty();
  }

  // The device-mapper device the online enable adopts instead of a remount: the one the
  // filesystem is mounted from when that is a foreign dm device (an LVM logical volume), or the
  // one adopted already; "" for the ordinary paths (a partition, or after a reboot: mounted from
  // /dev/mapper/NAME, which crypttab opened over the logical volume).
  Result<std::string> ToAdopt(const VolumeRecord& r) {
    DS_ASSIGN_OR_RETURN(std::string adopted, AdoptedName(r));
    if (!adopted.empty() || r.os || !Online()) return adopted;
    DS_ASSIGN_OR_RETURN(auto name, online::ForeignMappingAt(Canonical(r.device)));
    if (!name) return std::string();
    DS_ASSIGN_OR_RETURN(std::string src, MountedSource(r.mountpoint));
    if (src.empty() || Canonical(src) != Canonical(r.device)) return std::string();
    return *name;
  }

 private:
  Status Advance(VolumeRecord& r, Step s) {
    r.step = s;
    r.last_error.clear();
    DS_RETURN_IF_ERROR(state_.Save(r));
    if (!o_.freeze_at_step.empty() && !step_frozen_ && o_.freeze_at_step == StepName(s)) {
      step_frozen_ = true;  // once: the test continues the run with SIGCONT
      ::raise(SIGSTOP);
    }
    return Status::Ok();
  }

  // Unmounts `mountpoint` when one of `sources` is mounted there; refuses a foreign mount.
  Status UnmountIfFrom(const std::string& mountpoint, const std::vector<std::string>& sources) {
    DS_ASSIGN_OR_RETURN(std::string src, MountedSource(mountpoint));
    if (src.empty()) return Status::Ok();
    for (const auto& s : sources)
      if (!s.empty() && Canonical(s) == Canonical(src)) return UnmountFs(mountpoint);
    return Busy(mountpoint + ": " + src + " is mounted there, not " + sources.front() +
                "; diskseal does not unmount what it did not expect");
  }

  Status EnsureMounted(const VolumeRecord& r, const std::string& source) {
    DS_ASSIGN_OR_RETURN(std::string src, MountedSource(r.mountpoint));
    if (!src.empty()) {
      if (Canonical(src) == Canonical(source)) return Status::Ok();
      return Busy(r.mountpoint + ": " + src + " is mounted there; expected " + source);
    }
    return MountFs(source, r.mountpoint, r.fstype, r.mount_options, r.fstab ? r.fstab->options : "");
  }

  // `mounted`: the plaintext stays mounted from the device (online): the device is only read here,
  // and the encryption sector is chosen so that the mounted filesystem keeps working on the mapping.
  Status FormatAndEscrow(VolumeRecord& r, const std::string& tmp, bool mounted = false) {
    inplace::FormatRequest fr;
    fr.device = r.device;
    fr.temp_header = tmp;
    fr.format.pbkdf = o_.pbkdf;
    fr.format.uuid = r.LuksUuid();
    fr.resilience = o_.resilience;
    fr.device_mounted = mounted;
    fr.vault = o_.vault;
    fr.escrow_header = true;
    fr.secret_name = [&](const std::string& uuid) {
      return o_.secret_prefix.empty() ? vault::DefaultSecretName(uuid) : o_.secret_prefix + uuid;
    };
    fr.kek = o_.kek;
    fr.kek_alg = o_.kek_alg;
    fr.passphrase = [&] { return ReadKeyFile(env_, r.key_file); };
    // Escrowed (passphrase and header), read back, unwrapped and checked against this header while
    // it is still a temp file, the versions pinned in it: if any of it fails no data block has
    // been touched (inplace/inplace.h, shared with `encrypt --vault`).
    DS_ASSIGN_OR_RETURN(inplace::Formatted made, inplace::FormatAndEscrow(env_, fr, *o_.log));
    if (!made.secret_id.empty()) r.secret_id = made.secret_id;
    return Status::Ok();
  }

  // Once the engine finished: the final header replaces, in the vault, the one escrowed before
  // the first data block (which cannot tell how far the data got).
  Status EscrowFinalHeader(const VolumeRecord& r, const SecureBuffer& pass, const std::string& adopted = "") {
    inplace::FinalEscrowRequest fr;
    fr.device = adopted.empty() ? r.device : online::RawPath(adopted);
    fr.header = r.header;
    fr.vault = o_.vault;
    fr.pass = &pass;
    fr.no_vault_note = r.device + ": the vault holds only the header escrowed before the encryption finished; run "
                       "`diskseal enable --volume-type Data --vault URL ...` to escrow the final one";
    fr.failure_context = r.device + ": the data is encrypted, but its final header was not escrowed; run `diskseal enable` "
                         "with --vault again to escrow it";
    return inplace::EscrowFinalHeader(env_, fr, *o_.log);
  }

  // The decryption recorded in the header (inplace/inplace.h); done already (a run that then
  // stopped) or plaintext: nothing to do.
  // `adopted` as for Encrypt: the header's data is read below it, on the raw copy.
  Status InitDecrypt(VolumeRecord& r, const SecureBuffer& pass, const std::string& adopted = "") {
    inplace::InitDecryptRequest ir;
    ir.device = adopted.empty() ? r.device : online::RawPath(adopted);
    ir.header = r.header;
    DS_ASSIGN_OR_RETURN(ir.resilience, engine::ParseResilience(r.resilience));
    ir.pbkdf = o_.pbkdf;
    ir.unlock = [&](luks2::Volume& v) { return v.Unlock(pass.span()); };
    ir.bind = false;  // enable's header records its device from the start
    return inplace::InitDecrypt(env_, ir).status();
  }

  // Runs (or resumes) the operation the header records, writing the rate into the record about
  // once a second for `status` in other processes.
  Status RunEngine(VolumeRecord& r, const SecureBuffer& pass, const char* op, const std::string& adopted = "") {
    time_t last = 0;
    bool frozen = false;
    Status save_error;
    inplace::RunRequest rq;
    rq.device = adopted.empty() ? r.device : online::RawPath(adopted);
    rq.mapping = adopted;
    rq.header = r.header;
    rq.unlock = [&](luks2::Volume& v) { return v.UnlockAll(pass.span()); };
    rq.hotzone_bytes = o_.hotzone_bytes;
    rq.threads = o_.threads;
    rq.stop = o_.stop;
    rq.progress_out = o_.log;
    rq.progress_mode = o_.progress_mode;
    rq.progress_label = std::string(op) + " " + r.mountpoint;
    rq.observer = [&](const Progress::Snapshot& s) {
      const time_t now = std::time(nullptr);
      // Once: a test that continues the run (SIGCONT) must not find it stopping again.
      const bool freeze = o_.freeze_at_percent >= 0 && !frozen &&
                          s.done * 100 >= uint64_t(o_.freeze_at_percent) * s.total;
      frozen = frozen || freeze;
      if (now == last && !freeze) return;
      last = now;
      r.rate.pid = ::getpid();
      r.rate.done = s.done;
      r.rate.total = s.total;
      r.rate.mib_s = s.mib_s;
      r.rate.eta_s = s.eta_s;
      r.rate.updated = int64_t(now);
      Status saved = state_.Save(r);
      if (!saved.ok() && save_error.ok()) save_error = saved;
      if (freeze) ::raise(SIGSTOP);
    };
    inplace::RunOutcome out;
    Status ran = inplace::RunOperation(env_, rq, *o_.log, &out);
    if (ran.code() == Code::kInterrupted) {
      // The engine names a generic `diskseal resume`; this volume belongs to the machine run.
      std::string m = ran.message();
      const std::string generic = " and resumes with `diskseal resume`";
      if (size_t at = m.rfind(generic); at != std::string::npos) m.erase(at);
      const bool live = !out.mapping.empty();
      return Status(Code::kInterrupted, m + "; " + r.mountpoint + (live ? " stays mounted; " : " stays unmounted until it finishes: ") +
                                            "continue with `" + o_.command + "`");
    }
    // An error of the engine run names the device; the checks before it name it already.
    if (!ran.ok()) return out.started ? ran.WithContext(r.device) : ran;
    // The rate is advisory; a failure to record it is reported only after the data is safe.
    return save_error;
  }

  Status EnsureOpen(VolumeRecord& r, const SecureBuffer& pass) {
    const bool kernel = !o_.userspace && dm::Available();
    if (kernel) {
      DS_ASSIGN_OR_RETURN(auto m, dm::Find(r.name));
      if (m && !dm::IsStale(*m)) return Status::Ok();
      if (m) DS_RETURN_IF_ERROR(dm::Remove(r.name));
      DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(env_, r.device, r.header, true));
      // Every key the passphrase opens: an operation in progress maps two layouts.
      DS_ASSIGN_OR_RETURN(auto unlocked, v.UnlockAll(pass.span()));
      std::map<int, const SecureBuffer*> keys;
      for (auto& [digest, key] : unlocked) keys[digest] = &key;
      DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
      if (st && st->hotzone_len) {
        // A crash mid-hotzone: recovered here, while nothing uses the device.
        DS_RETURN_IF_ERROR(engine::CheckBindingKeyless(env_, v, r.header));
        engine::EngineOptions eo;
        eo.until_done = st->done + *st->hotzone_len;
        DS_RETURN_IF_ERROR(engine::RunOperation(v, keys, eo).WithContext(r.device + ": recovering the interrupted hotzone"));
      }
      dm::Activation a;
      a.name = r.name;
      a.luks_uuid = r.LuksUuid();
      a.device = Canonical(r.device);
      DS_ASSIGN_OR_RETURN(a.segments, dm::VolumeSegments(v, keys));
      DS_RETURN_IF_ERROR(dm::Create(a));
      if (!r.loop.empty()) {
        r.loop.clear();
        return state_.Save(r);
      }
      return Status::Ok();
    }
    DS_ASSIGN_OR_RETURN(auto rec, run_.Find(r.name));
    std::string file;
    if (rec && fuse::RunDir::IsAlive(*rec)) {
      file = rec->file;
    } else {
      if (rec) DS_RETURN_IF_ERROR(run_.CleanupStale(*rec));
      DS_RETURN_IF_ERROR(fuse::CheckFuseAvailable());
      // The daemon inherits this claim and keeps the device for its whole life.
      DS_ASSIGN_OR_RETURN(DeviceClaim view_claim, DeviceClaim::Acquire(r.device, {ClaimMode::kExclusive, false, {}}));
      DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(env_, r.device, r.header, true));
      DS_ASSIGN_OR_RETURN(luks2::Volume::Unlocked u, v.Unlock(pass.span()));
      std::map<int, const SecureBuffer*> keys = {{u.digest, &u.key}};
      DS_ASSIGN_OR_RETURN(std::unique_ptr<BlockDevice> view, v.OpenData(keys));
      fuse::StartRequest req;
      req.name = r.name;
      req.device = Canonical(r.device);
      req.header = Canonical(r.header);
      req.uuid = r.LuksUuid();
      uint32_t sector = 512;
      for (const auto& seg : luks2::Segments(v.metadata()))
        if (seg.type == "crypt") sector = std::max(sector, seg.sector_size);
      req.atomic_unit = sector;
      req.close_in_child = {lock_.fd()};
      DS_ASSIGN_OR_RETURN(fuse::Mapping m, fuse::StartDaemon(run_, view.get(), req));
      file = m.file;
    }
    DS_ASSIGN_OR_RETURN(std::string loop, AttachLoop(file));
    if (loop != r.loop) {
      r.loop = loop;
      DS_RETURN_IF_ERROR(state_.Save(r));
    }
    return Status::Ok();
  }

  Status Close(VolumeRecord& r) {
    DS_ASSIGN_OR_RETURN(auto rec, run_.Find(r.name));
    if (rec) {
      DS_RETURN_IF_ERROR(fuse::StopDaemon(run_, *rec));
    } else if (dm::Available()) {
      DS_ASSIGN_OR_RETURN(auto m, dm::Find(r.name));
      if (m) DS_RETURN_IF_ERROR(dm::Remove(r.name));
    }
    r.loop.clear();
    return state_.Save(r);
  }

  Status Configure(const VolumeRecord& r) {
    if (!r.loop.empty())
      *o_.log << r.mountpoint << ": this kernel has no device-mapper, so the crypttab/fstab lines cannot open it at boot; "
              << "the boot-time unit diskseal-resume.service (`diskseal resume --all`) opens and mounts it again "
              << "(enable it: systemctl enable diskseal-resume.service)\n";
    const std::string ct = CrypttabLine(r.name, StableDeviceSpec(env_, o_.root, r.device), r.key_file, r.header);
    DS_RETURN_IF_ERROR(ApplyEtcEdit(env_, o_.root, "crypttab", [&](std::string_view t) {
      return SetCrypttabLine(t, r.name, ct);
    }));
    const std::string ft = FstabLine(MappingFstabEntry(r.name, r.mountpoint, r.fstype, r.fstab));
    return ApplyEtcEdit(env_, o_.root, "fstab", [&](std::string_view t) {
      return SetFstabLine(t, r.mountpoint, ft);
    });
  }

  Status Unconfigure(const VolumeRecord& r) {
    DS_RETURN_IF_ERROR(ApplyEtcEdit(env_, o_.root, "crypttab", [&](std::string_view t) {
      return SetCrypttabLine(t, r.name, std::nullopt);
    }));
    std::optional<std::string> orig;
    if (r.fstab) orig = FstabLine(*r.fstab);
    return ApplyEtcEdit(env_, o_.root, "fstab", [&](std::string_view t) {
      return SetFstabLine(t, r.mountpoint, orig);
    });
  }

  Env& env_;
  const EnableOptions& o_;
  StateDir& state_;
  const MachineLock& lock_;
  fuse::RunDir run_;
  bool restart_pending_ = false;
  bool step_frozen_ = false;
};

VolumeOutcome Outcome(const VolumeRecord& r, const std::string& plaintext, const std::string& result) {
  VolumeOutcome v;
  v.mountpoint = r.mountpoint;
  v.device = r.device;
  v.name = r.name;
  v.header = r.header;
  v.key_file = r.key_file;
  v.secret_id = r.secret_id;
  v.plaintext = plaintext;
  v.result = result;
  return v;
}

Result<MachineLock> Lock(const EnableOptions& o, StateDir& state) {
  DS_RETURN_IF_ERROR(state.Prepare());
  return MachineLock::Acquire(state.LockPath(), o.command, o.wait_for_lock,
                              [&](const std::string& who) {
                                *o.log << "diskseal: waiting for the machine lock "
                                       << state.LockPath() << ", held by " << who << "\n";
                              });
}

// Runs `step` on each record, recording the error that stops it in the record.
Status RunEach(StateDir& state, std::vector<VolumeRecord>& work, std::ostream& log,
               const char* verb, const std::function<Status(VolumeRecord&)>& step) {
  for (size_t i = 0; i < work.size(); ++i) {
    VolumeRecord& r = work[i];
    log << verb << " data volume " << i + 1 << "/" << work.size() << ": " << r.mountpoint << " ("
        << r.device << ")\n";
    // Status numbers the volume as this log does.
    r.run_index = int(i + 1);
    r.run_size = int(work.size());
    Status s = state.Save(r);
    if (s.ok()) s = step(r);
    if (!s.ok()) {
      // A stop (SIGINT/SIGTERM) is no failure: status says "interrupted at N%" for it.
      r.last_error = s.code() == Code::kInterrupted ? "" : s.message();
      r.rate = Rate{};
      (void)state.Save(r);  // the original error matters more than a failure to record it
      return s.WithContext(std::string(verb) + " data volume " + std::to_string(i + 1) + "/" +
                           std::to_string(work.size()) + " (" + r.mountpoint + ")");
    }
  }
  return Status::Ok();
}

}  // namespace

std::string NotEncryptableReason(const Volume& v) {
  if (v.role != VolumeRole::kData) return std::string("its role is ") + RoleName(v.role);
  if (v.mountpoint.empty()) return "not mounted";
  if (v.fstype != "ext4" && v.fstype != "xfs" && v.fstype != "btrfs")
    return "filesystem " + v.fstype + " (ext4, xfs and btrfs are supported)";
  if (v.is_luks || v.encrypted) return "already encrypted";
  if (v.dev.rfind("/dev/", 0) != 0) return "not on a block device (" + v.dev + ")";
  if (v.lvm_pv) return "an LVM physical volume";
  return "";
}

bool EncryptsWithoutUnmount(const Volume& v, const EnableOptions& o) {
  if (o.userspace || o.offline || v.role != VolumeRole::kData || v.mountpoint.empty() || !dm::Available()) return false;
  auto foreign = online::ForeignMappingAt(v.dev);
  if (!foreign.ok() || !foreign->has_value()) return false;
  auto why = online::AdoptRefusalAt(v.dev);
  return why.ok() && why->empty();
}

Result<std::vector<VolumeOutcome>> EnableDataVolumes(Env& env, const EnableOptions& o) {
  StateDir state(env, o.state_dir);
  DS_ASSIGN_OR_RETURN(MachineLock lock, Lock(o, state));
  DS_ASSIGN_OR_RETURN(Machine m, Discover(o.root));
  DS_ASSIGN_OR_RETURN(auto records, state.List());

  std::vector<VolumeRecord> work, starting;
  std::vector<VolumeOutcome> skipped;
  auto known = [&](const std::string& dev, const std::string& mp) -> const VolumeRecord* {
    for (const auto& r : records)
      if (r.step != Step::kDisabled &&
          (Canonical(r.device) == Canonical(dev) || r.mountpoint == mp || (!r.loop.empty() && r.loop == dev)))
        return &r;
    return nullptr;
  };
  for (const auto& r : records) {
    if (r.os || !Selected(o, r.mountpoint) || r.step == Step::kDisabled) continue;
    if (InDisableFlow(r.step))
      return Busy(r.mountpoint + ": a disable was interrupted here (step " + StepName(r.step) +
                  "); run `diskseal disable --volume-type Data` to finish it first");
    work.push_back(r);
  }
  for (const Volume* v : m.data()) {
    if (!Selected(o, v->mountpoint) || known(v->dev, v->mountpoint)) continue;
    std::string why = NotEncryptableReason(*v);
    bool unsupported = false;
    if (why.empty() && !o.userspace && !o.offline) {
      // Mounted from a device-mapper device: encrypted online under it (no remount) when its
      // table can be adopted (online/adopt.h); refused here, before any record, when not.
      DS_ASSIGN_OR_RETURN(why, online::AdoptRefusalAt(v->dev));
      unsupported = !why.empty();
      if (unsupported) why = "cannot be encrypted without a remount: " + why;
    }
    if (!why.empty()) {
      VolumeOutcome s;
      s.mountpoint = v->mountpoint;
      s.device = v->dev;
      s.result = "skipped: " + why;
      if (!o.only.empty())
        return Status(unsupported ? Code::kUnsupported : Code::kInvalidArgument,
                      v->mountpoint + " (" + v->dev + "): " + (unsupported ? "" : "cannot be encrypted: ") + why);
      *o.log << "diskseal: " << v->mountpoint << " (" << v->dev << "): skipped: " << why << "\n";
      skipped.push_back(s);
      continue;
    }
    VolumeRecord r;
    r.name = luks2::NewUuid();
    r.device = v->dev;
    r.mountpoint = v->mountpoint;
    r.fstype = v->fstype;
    r.mount_options = v->mount_options;
    r.fstab = v->fstab;
    r.header = state.HeaderPath(r.name);
    r.key_file = state.KeyPath(r.name);
    r.resilience = engine::ResilienceName(o.resilience);
    starting.push_back(std::move(r));
  }
  for (const auto& want : o.only) {
    auto at = [&](const VolumeRecord& r) { return r.mountpoint == want || r.mountpoint == Canonical(want); };
    if (std::none_of(work.begin(), work.end(), at) && std::none_of(starting.begin(), starting.end(), at))
      return NotFound(want + ": no mounted data volume there");
  }
  if (!starting.empty() && o.preflight) {
    std::vector<std::string> mps;
    for (const auto& r : starting) mps.push_back(r.mountpoint);
    DS_RETURN_IF_ERROR(o.preflight(m, mps));
  }
  for (auto& r : starting) {
    // A disabled record of the same device is history now.
    for (const auto& old : records)
      if (old.step == Step::kDisabled && (old.device == r.device || old.mountpoint == r.mountpoint))
        DS_RETURN_IF_ERROR(state.Forget(old.name));
    DS_RETURN_IF_ERROR(state.Save(r));
    work.push_back(std::move(r));
  }
  if (work.empty()) *o.log << "No data volume to encrypt\n";
  else *o.log << "Encrypting " << work.size() << " data volume" << (work.size() == 1 ? "" : "s") << "\n";
  Runner run(env, o, state, lock);
  DS_RETURN_IF_ERROR(RunEach(state, work, *o.log, "Encrypting", [&](VolumeRecord& r) { return run.Enable(r); }));
  std::vector<VolumeOutcome> out;
  for (const auto& r : work) out.push_back(Outcome(r, run.Plaintext(r), "Encrypted"));
  for (auto& s : skipped) out.push_back(std::move(s));
  return out;
}

Result<std::vector<VolumeOutcome>> EnableOsVolume(Env& env, const EnableOptions& o) {
  StateDir state(env, o.state_dir);
  DS_ASSIGN_OR_RETURN(MachineLock lock, Lock(o, state));
  DS_ASSIGN_OR_RETURN(Machine m, Discover(o.root));
  DS_ASSIGN_OR_RETURN(auto records, state.List());
  std::optional<VolumeRecord> rec;
  for (const auto& r : records) {
    if (!r.os || r.step == Step::kDisabled) continue;
    if (InDisableFlow(r.step))
      return Busy(std::string("/: a disable of the OS volume was interrupted (step ") + StepName(r.step) + "); finish it first");
    rec = r;
  }
  if (!rec) {
    const Volume* os = m.os();
    if (!os) return NotFound("/: no OS volume found (nothing is mounted at /)");
    std::string why;
    if (os->is_luks || os->encrypted) why = "it is already encrypted";
    else if (os->fstype != "ext4" && os->fstype != "xfs") why = "filesystem " + os->fstype + " (ext4 and xfs are supported)";
    else if (os->dev.rfind("/dev/", 0) != 0) why = "it is not on a block device (" + os->dev + ")";
    if (!why.empty()) return Unsupported("/ (" + os->dev + "): the OS volume cannot be encrypted: " + why);
    // Root on an LVM logical volume: the physical volume under it is what gets encrypted (the
    // initramfs opens it before LVM activates the group on it).
    std::string device = os->dev;
    if (os->lvm_lv) {
      auto pv = LvmPhysicalDevice(m, *os);
      if (!pv.ok()) return Unsupported("/ (" + os->dev + "): the OS volume cannot be encrypted: " + pv.status().message());
      device = *pv;
      if (std::string why_lvm = MachineLvmFilterProblem(env, o.root); !why_lvm.empty())
        return Unsupported("/ (" + os->dev + " on " + device + "): the OS volume cannot be encrypted: " + why_lvm);
    }
    const Volume* boot = m.boot();
    if (!boot || boot->dev == os->dev)
      return Unsupported("/ (" + os->dev + "): there is no separate /boot to hold the OS volume's header, which must be "
                         "readable before / is opened (diskseal doctor --volume-type OS says what to do)");
    auto boot_pv = boot->lvm_lv ? LvmPhysicalDevice(m, *boot) : Result<std::string>(std::string());
    if (os->lvm_lv && boot_pv.ok() && *boot_pv == device)
      return Unsupported("/boot (" + boot->dev + ") is a logical volume on " + device +
                         ", the physical volume that would be encrypted: the OS volume's header cannot live there "
                         "(doctor: header-location)");
    if (!o.vault)
      return InvalidArgument("/ (" + os->dev + "): the OS volume needs a vault (--vault): the initramfs fetches its key "
                             "from there at every boot");
    if (o.preflight) DS_RETURN_IF_ERROR(o.preflight(m, {"/"}));
    VolumeRecord r;
    r.os = true;
    r.name = o.os.name;
    r.uuid = luks2::NewUuid();
    // On diskseal's prepared linear mapping (no reboot needed): the partition below it.
    r.device = os->prepared_from.empty() ? device : os->prepared_from;
    r.lvm = os->lvm_lv;
    r.mountpoint = "/";
    r.fstype = os->fstype;
    r.mount_options = os->mount_options;
    r.fstab = os->fstab;
    r.header = o.os.header;
    r.key_file = state.KeyPath(r.uuid);
    r.resilience = engine::ResilienceName(o.resilience);
    r.run_index = r.run_size = 1;
    DS_RETURN_IF_ERROR(state.Save(r));
    rec = std::move(r);
  }
  VolumeRecord& r = *rec;
  *o.log << "Encrypting the OS volume: / (" << r.device << ")\n";
  Runner run(env, o, state, lock);
  Status s = run.Enable(r);
  if (!s.ok()) {
    r.last_error = s.code() == Code::kInterrupted ? "" : s.message();
    r.rate = Rate{};
    (void)state.Save(r);
    return s.WithContext("Encrypting the OS volume (/)");
  }
  return std::vector<VolumeOutcome>{
      Outcome(r, run.restart_pending() ? "" : "/dev/mapper/" + r.name, run.restart_pending() ? "VMRestartPending" : "Encrypted")};
}

Result<std::vector<VolumeOutcome>> DisableOsVolume(Env& env, const EnableOptions& o) {
  StateDir state(env, o.state_dir);
  DS_ASSIGN_OR_RETURN(MachineLock lock, Lock(o, state));
  DS_ASSIGN_OR_RETURN(auto records, state.List());
  std::optional<VolumeRecord> rec;
  for (const auto& r : records)
    if (r.os && r.step != Step::kDisabled) rec = r;
  if (!rec) {
    *o.log << "The OS volume is not encrypted by diskseal\n";
    return std::vector<VolumeOutcome>{};
  }
  VolumeRecord& r = *rec;
  if (r.step < Step::kConfigured)
    return Busy("/: the OS volume's encryption is not finished (step " + std::string(StepName(r.step)) +
                "); let it finish (diskseal status), then disable");
  *o.log << "Decrypting the OS volume: / (" << r.device << ")\n";
  Runner run(env, o, state, lock);
  Status s = run.DisableOs(r);
  if (!s.ok()) {
    r.last_error = s.code() == Code::kInterrupted ? "" : s.message();
    r.rate = Rate{};
    (void)state.Save(r);
    return s.WithContext("Decrypting the OS volume (/)");
  }
  // / stays where it is mounted from (the now plain mapping, or the LV over it) until the restart.
  auto src = MountedSource("/");
  return std::vector<VolumeOutcome>{Outcome(r, src.ok() && !src->empty() ? *src : r.device, "Decrypted")};
}

Result<std::vector<VolumeOutcome>> DisableDataVolumes(Env& env, const EnableOptions& o) {
  StateDir state(env, o.state_dir);
  DS_ASSIGN_OR_RETURN(MachineLock lock, Lock(o, state));
  DS_ASSIGN_OR_RETURN(auto records, state.List());
  std::vector<VolumeRecord> work;
  for (const auto& r : records) {
    if (r.os || !Selected(o, r.mountpoint) || r.step == Step::kDisabled) continue;
    if (r.step < Step::kConfigured)
      return Busy(r.mountpoint + ": an enable was interrupted here (step " + StepName(r.step) +
                  "); run `diskseal enable` to finish it, then disable");
    work.push_back(r);
  }
  for (const auto& want : o.only) {
    bool found = std::any_of(work.begin(), work.end(), [&](const VolumeRecord& r) {
      return r.mountpoint == want || r.mountpoint == Canonical(want);
    });
    if (!found) return NotFound(want + ": no data volume encrypted by diskseal there");
  }
  if (work.empty()) *o.log << "No data volume encrypted by diskseal\n";
  else *o.log << "Decrypting " << work.size() << " data volume" << (work.size() == 1 ? "" : "s") << "\n";
  Runner run(env, o, state, lock);
  DS_RETURN_IF_ERROR(RunEach(state, work, *o.log, "Decrypting", [&](VolumeRecord& r) { return run.Disable(r); }));
  std::vector<VolumeOutcome> out;
  for (const auto& r : work) out.push_back(Outcome(r, r.device, "Decrypted"));
  return out;
}

Result<std::vector<VolumeOutcome>> ResumeRecordedVolumes(Env& env, const EnableOptions& o) {
  StateDir state(env, o.state_dir);
  DS_ASSIGN_OR_RETURN(auto records, state.List());
  EnableOptions enable = o, disable = o;
  enable.only.clear();
  disable.only.clear();
  enable.preflight = nullptr;
  disable.preflight = nullptr;
  bool os = false, os_disable = false;
  for (const auto& r : records) {
    if (r.step == Step::kDisabled) continue;
    if (r.os) {
      (InDisableFlow(r.step) ? os_disable : os) = true;
      continue;
    }
    (InDisableFlow(r.step) ? disable : enable).only.push_back(r.mountpoint);
  }
  std::vector<VolumeOutcome> out;
  if (enable.only.empty() && disable.only.empty() && !os && !os_disable) {
    *o.log << "No volume recorded in " << o.state_dir << ": nothing to resume\n";
    return out;
  }
  // The OS volume first, as ADE orders VolumeType All: after the boot that put / on its mapping
  // this is where its encryption runs.
  if (os) {
    DS_ASSIGN_OR_RETURN(out, EnableOsVolume(env, enable));
  }
  if (os_disable) {
    DS_ASSIGN_OR_RETURN(out, DisableOsVolume(env, disable));
  }
  if (!enable.only.empty()) {
    DS_ASSIGN_OR_RETURN(auto more, EnableDataVolumes(env, enable));
    for (auto& v : more) out.push_back(std::move(v));
  }
  if (!disable.only.empty()) {
    DS_ASSIGN_OR_RETURN(auto more, DisableDataVolumes(env, disable));
    for (auto& v : more) out.push_back(std::move(v));
  }
  return out;
}

}  // namespace ds::machine

// In-place operations: encrypt (and resume). Progress on stderr; SIGINT/SIGTERM stop at the next
// commit point and leave a resumable volume.
#include <signal.h>
#include <unistd.h>

#include <atomic>

#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "cli/luks_options.h"
#include "engine/engine.h"
#include "engine/reencrypt_state.h"
#include "crypto/crypto.h"
#include "cli/vault_options.h"
#include "luks2/header_io.h"
#include "vault/escrow.h"

#include <algorithm>

namespace ds::cli {

namespace {

std::atomic<bool> g_stop{false};

void OnSignal(int) { g_stop.store(true); }

void CatchStopSignals() {
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, nullptr);
  sigaction(SIGTERM, &sa, nullptr);
}

struct EngineArgs {
  uint64_t hotzone = 32u << 20;
  bool progress_json = false;
  unsigned threads = 0;
  uint64_t stop_after = 0;
};

void AddEngineOptions(CLI::App& app, EngineArgs& e) {
  AddSizeOption(app, "--hotzone-size", e.hotzone, "bytes per step (default 32M; the engine's one buffer; journal mode caps it at its area)");
  app.add_flag("--progress-json", e.progress_json, "progress as JSON lines on stderr");
  app.add_option("--threads", e.threads, "encryption threads (default: one per core)");
  AddSizeOption(app, "--stop-after", e.stop_after,
                "stop at the first commit point after this many bytes (exit 9, resumable): work in windows");
}

// Loads the volume with its operation, unlocks, and runs it to the end.
Status ResumeOperation(Globals& g, const DeviceArgs& d, const KeySource& keys, const EngineArgs& e,
                       const SecureBuffer* known_key, int known_digest,
                       const SecureBuffer* known_pass = nullptr, const VaultOptions* vo = nullptr) {
  OpenOptions rw;
  DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, d.device, d.header, true));
  DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
  if (!st) {
    *g.out << d.device << ": no in-place operation to resume.\n";
    return Status::Ok();
  }
  std::map<int, const SecureBuffer*> keymap;
  std::map<int, SecureBuffer> unlocked;
  if (known_key) {
    keymap[known_digest] = known_key;
  } else {
    SecureBuffer read;
    if (!known_pass) {
      DS_ASSIGN_OR_RETURN(read, ObtainPassphrase(*g.env, keys, vo, v.metadata().uuid, d.device));
    }
    DS_ASSIGN_OR_RETURN(unlocked, v.UnlockAll((known_pass ? *known_pass : read).span()));
    for (auto& [digest, key] : unlocked) keymap[digest] = &key;
  }
  CatchStopSignals();
  const uint64_t left = st->data_size - st->done;
  Progress p(g.err, Progress::AutoMode(isatty(2), e.progress_json),
             engine::ModeName(st->mode), st->data_size, st->done);
  engine::EngineOptions eo;
  eo.hotzone_bytes = e.hotzone;
  eo.threads = e.threads;
  eo.stop = &g_stop;
  eo.stop_after = e.stop_after;
  eo.progress = &p;
  Status s = engine::RunOperation(v, keymap, eo);
  if (!s.ok()) return s;
  p.Finish();
  *g.out << d.device << ": " << engine::ModeName(st->mode) << " finished (" << left << " bytes this run).\n";
  return Status::Ok();
}

}  // namespace

Runner SetupEncrypt(CLI::App& app, Globals& g) {
  struct Opts {
    DeviceArgs dev;
    KeySource keys;
    luks2::FormatOptions f;
    EngineArgs e;
    std::string resilience = "checksum";
    uint64_t reduce = 0;
    VaultOptions vault;
  };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  AddPbkdfOptions(app, o->f.pbkdf);
  AddEngineOptions(app, o->e);
  AddVaultOptions(app, o->vault);
  app.add_option("--resilience", o->resilience, "checksum (default), journal, or none (no crash safety)");
  app.add_option("--cipher,-c", o->f.cipher, "data cipher (default aes-xts-plain64)");
  app.add_option("--key-size,-s", o->f.key_size_bits, "volume key size in bits (default 512)");
  app.add_option("--sector-size", o->f.sector_size, "encryption sector size (default 4096 when the device allows)");
  AddSizeOption(app, "--luks2-metadata-size", o->f.metadata_size, "metadata copy size, 16k..4m");
  AddSizeOption(app, "--luks2-keyslots-size", o->f.keyslots_size, "keyslots area size");
  AddSizeOption(app, "--reduce-device-size", o->reduce, "header at the start of the device (not implemented yet)");
  app.add_option("--label", o->f.label, "LUKS2 label");
  app.add_option("--uuid", o->f.uuid, "use this UUID");
  return [o, &g]() -> Status {
    CatchStopSignals();  // before anything is written: a signal from now on stops at a commit point
    const std::string& dev = o->dev.device;
    if (o->reduce || o->dev.header.empty())
      return Unsupported(dev + ": encrypting with the header at the start of the device "
                               "(--reduce-device-size) is not implemented yet; use --header FILE");
    DS_ASSIGN_OR_RETURN(engine::Resilience res, engine::ParseResilience(o->resilience));
    // Running the original command again resumes an interrupted run.
    if (g.env->Exists(o->dev.header)) {
      auto v = luks2::Volume::Load(*g.env, dev, o->dev.header, false);
      if (!v.ok())
        return Busy(o->dev.header + ": exists but holds no readable LUKS2 header (" + v.status().message() +
                    "); refusing to overwrite it");
      DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v->metadata(), v->data_device().Size()));
      if (!st) return Busy(dev + ": already encrypted (" + o->dev.header + " holds a finished LUKS2 header)");
      return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1, nullptr, &o->vault);
    }
    {
      OpenOptions probe;
      probe.write = true;
      probe.exclusive = true;
      DS_ASSIGN_OR_RETURN(auto d, g.env->Open(dev, probe));
      DS_ASSIGN_OR_RETURN(bool luks, luks2::HasLuksMagic(*d));
      if (luks) return Busy(dev + ": already a LUKS volume; refusing to encrypt it again");
      if (d->Size() % 512)
        return InvalidArgument(dev + ": size " + std::to_string(d->Size()) + " is not a multiple of 512 bytes");
    }
    // With a vault and no key file, diskseal makes the passphrase (as ADE does) and escrows it.
    std::unique_ptr<vault::VaultClient> client;
    if (o->vault.enabled()) {
      DS_ASSIGN_OR_RETURN(client, MakeVaultClient(*g.env, o->vault));
    }
    SecureBuffer pass;
    if (client && o->keys.key_file.empty()) {
      DS_ASSIGN_OR_RETURN(pass, vault::GeneratePassphrase());
    } else {
      DS_ASSIGN_OR_RETURN(pass, ReadKey(*g.env, o->keys, "Enter new passphrase for " + dev + ": ", true));
    }
    DS_ASSIGN_OR_RETURN(uint32_t digest_iters, luks2::ChooseDigestIterations(o->f.pbkdf));
    // The header is built completely in a temporary file, with the operation already recorded
    // in it, and then renamed into place: the header file either does not exist or tells the
    // truth (cryptsetup's second power-cut lesson).
    const std::string tmp = o->dev.header + ".diskseal-new";
    if (g.env->Exists(tmp)) DS_RETURN_IF_ERROR(g.env->Remove(tmp));
    SecureBuffer vk;
    int digest = -1;
    auto hook = [&](luks2::Metadata& md, const SecureBuffer& key) -> Status {
      DS_RETURN_IF_ERROR(engine::InitEncrypt(md, key, res, digest_iters));
      digest = 0;
      return Status::Ok();
    };
    o->f.offset_sectors = 0;
    {
      auto v = luks2::Volume::Format(*g.env, dev, tmp, o->f, pass.span(), hook, &vk);
      if (!v.ok()) {
        (void)g.env->Remove(tmp);
        return v.status().WithContext(dev + ": encrypt");
      }
      if (client) {
        // Escrow, read back, unwrap and check against this header's keyslot and digest while the
        // header is still a temp file: if any of it fails, no data block has been touched.
        vault::EscrowRequest req;
        req.luks_uuid = v->metadata().uuid;
        req.secret_name = o->vault.SecretNameFor(req.luks_uuid);
        req.kek = o->vault.kek;
        req.kek_alg = o->vault.kek_alg;
        auto verify = [&](const SecureBuffer& p) -> Status {
          DS_ASSIGN_OR_RETURN(luks2::Volume check, luks2::Volume::Load(*g.env, dev, tmp, false));
          auto u = check.Unlock(p.span());
          if (!u.ok()) return u.status();
          if (!u->key.Equals(vk.span())) return Corrupt("the escrowed passphrase opens a different key");
          return Status::Ok();
        };
        auto rec = vault::EscrowAndVerify(*client, pass, req, verify);
        if (!rec.ok()) {
          (void)g.env->Remove(tmp);
          return rec.status().WithContext(dev + ": key escrow failed; nothing was written to the device");
        }
        *g.err << dev << ": passphrase escrowed and verified as " << rec->secret_id << "\n";
      }
    }
    DS_RETURN_IF_ERROR(g.env->Rename(tmp, o->dev.header));
    return ResumeOperation(g, o->dev, o->keys, o->e, &vk, digest);
  };
}

Runner SetupDecrypt(CLI::App& app, Globals& g) {
  struct Opts {
    DeviceArgs dev;
    KeySource keys;
    EngineArgs e;
    std::string resilience = "checksum";
    luks2::PbkdfOptions pbkdf;
    VaultOptions vault;
  };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  AddEngineOptions(app, o->e);
  AddVaultOptions(app, o->vault);
  app.add_option("--resilience", o->resilience, "checksum (default), journal, or none (no crash safety)");
  return [o, &g]() -> Status {
    CatchStopSignals();
    const std::string& dev = o->dev.device;
    if (o->dev.header.empty())
      return Unsupported(dev + ": decrypting a volume whose header is at the start of the device "
                               "(data shift) is not implemented yet; only detached headers (--header FILE)");
    DS_ASSIGN_OR_RETURN(engine::Resilience res, engine::ParseResilience(o->resilience));
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, dev, o->dev.header, true));
    DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
    if (st) return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1, nullptr, &o->vault);
    if (luks2::Segments(v.metadata()).front().type == "linear")
      return Busy(dev + ": already decrypted (the header describes plaintext)");
    DS_RETURN_IF_ERROR(v.CheckRequirements());
    DS_ASSIGN_OR_RETURN(SecureBuffer pass, ObtainPassphrase(*g.env, o->keys, &o->vault, v.metadata().uuid, dev));
    DS_ASSIGN_OR_RETURN(luks2::Volume::Unlocked u, v.Unlock(pass.span()));
    DS_ASSIGN_OR_RETURN(uint32_t iters, luks2::ChooseDigestIterations(o->pbkdf));
    luks2::Metadata before = v.metadata();
    DS_RETURN_IF_ERROR(engine::InitDecrypt(v.mutable_metadata(), u.key, res, iters).WithContext(dev));
    DS_RETURN_IF_ERROR(v.Commit());  // one header write: the plain header or the in-progress one
    DS_RETURN_IF_ERROR(ResumeOperation(g, o->dev, o->keys, o->e, &u.key, u.digest));
    *g.out << dev << " holds plaintext again; " << o->dev.header << " is no longer needed.\n";
    return Status::Ok();
  };
}

Runner SetupReencrypt(CLI::App& app, Globals& g) {
  struct Opts {
    DeviceArgs dev;
    KeySource keys;
    EngineArgs e;
    std::string resilience = "checksum";
    luks2::PbkdfOptions pbkdf;
    std::string cipher;
    uint32_t key_size_bits = 0, sector_size = 0;
  };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  AddEngineOptions(app, o->e);
  AddPbkdfOptions(app, o->pbkdf);
  app.add_option("--resilience", o->resilience, "checksum (default), journal, or none (no crash safety)");
  app.add_option("--cipher,-c", o->cipher, "new data cipher (default: unchanged)");
  app.add_option("--key-size,-s", o->key_size_bits, "new volume key size in bits (default: unchanged)");
  app.add_option("--sector-size", o->sector_size, "new encryption sector size (default: unchanged)");
  return [o, &g]() -> Status {
    CatchStopSignals();
    const std::string& dev = o->dev.device;
    if (o->dev.header.empty())
      return Unsupported(dev + ": reencrypting a volume whose header is at the start of the device is not "
                               "implemented yet; only detached headers (--header FILE)");
    DS_ASSIGN_OR_RETURN(engine::Resilience res, engine::ParseResilience(o->resilience));
    DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, dev, o->dev.header, true));
    DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
    if (st) return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1);
    DS_RETURN_IF_ERROR(v.CheckRequirements());
    const luks2::SegmentInfo seg = luks2::Segments(v.metadata()).front();
    if (seg.type != "crypt") return InvalidArgument(dev + ": holds plaintext; use encrypt");
    DS_ASSIGN_OR_RETURN(SecureBuffer pass, ReadKey(*g.env, o->keys, "Enter passphrase for " + dev + ": ", false));
    DS_ASSIGN_OR_RETURN(luks2::Volume::Unlocked u, v.Unlock(pass.span()));
    const std::string cipher = o->cipher.empty() ? seg.cipher : o->cipher;
    const size_t key_bytes = o->key_size_bits ? o->key_size_bits / 8 : u.key.size();
    const uint32_t sector = o->sector_size ? o->sector_size : seg.sector_size;
    DS_RETURN_IF_ERROR(CheckCipherSpec(cipher, key_bytes).WithContext("--cipher/--key-size"));
    if (sector < 512 || sector > 4096 || (sector & (sector - 1)) || v.data_device().Size() % sector)
      return InvalidArgument(dev + ": --sector-size " + std::to_string(sector) + " does not fit the device");
    SecureBuffer nk(key_bytes);
    do {
      DS_RETURN_IF_ERROR(RandomBytes(nk.span()));
    } while (nk.span().size() % 2 == 0 &&
             std::equal(nk.data(), nk.data() + key_bytes / 2, nk.data() + key_bytes / 2));
    DS_ASSIGN_OR_RETURN(luks2::KdfSpec kdf, luks2::ChooseKdf(o->pbkdf));
    DS_ASSIGN_OR_RETURN(uint32_t iters, luks2::ChooseDigestIterations(o->pbkdf));
    DS_RETURN_IF_ERROR(engine::InitReencrypt(v.mutable_metadata(), v.metadata_device(), u.key, nk, pass.span(),
                                             kdf, cipher, sector, res, iters).WithContext(dev));
    DS_RETURN_IF_ERROR(v.Commit());
    return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1, &pass);
  };
}

Runner SetupResume(CLI::App& app, Globals& g) {
  struct Opts { DeviceArgs dev; KeySource keys; EngineArgs e; VaultOptions vault; };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  AddEngineOptions(app, o->e);
  AddVaultOptions(app, o->vault);
  return [o, &g]() -> Status {
    CatchStopSignals();
    return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1, nullptr, &o->vault);
  };
}

}  // namespace ds::cli

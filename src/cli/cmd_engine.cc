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
#include "luks2/header_io.h"

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
  uint64_t hotzone = 8u << 20;
  bool progress_json = false;
  unsigned threads = 0;
};

void AddEngineOptions(CLI::App& app, EngineArgs& e) {
  AddSizeOption(app, "--hotzone-size", e.hotzone, "bytes per step (default 8M; memory use is about twice this)");
  app.add_flag("--progress-json", e.progress_json, "progress as JSON lines on stderr");
  app.add_option("--threads", e.threads, "encryption threads (default: one per core)");
}

// Loads the volume with its operation, unlocks, and runs it to the end.
Status ResumeOperation(Globals& g, const DeviceArgs& d, const KeySource& keys, const EngineArgs& e,
                       const SecureBuffer* known_key, int known_digest) {
  OpenOptions rw;
  DS_ASSIGN_OR_RETURN(luks2::Volume v, luks2::Volume::Load(*g.env, d.device, d.header, true));
  DS_ASSIGN_OR_RETURN(auto st, engine::ReadState(v.metadata(), v.data_device().Size()));
  if (!st) {
    *g.out << d.device << ": no in-place operation to resume.\n";
    return Status::Ok();
  }
  std::map<int, const SecureBuffer*> keymap;
  luks2::Volume::Unlocked u;
  if (known_key) {
    keymap[known_digest] = known_key;
  } else {
    DS_ASSIGN_OR_RETURN(SecureBuffer pass, ReadKey(*g.env, keys, "Enter passphrase for " + d.device + ": ", false));
    DS_ASSIGN_OR_RETURN(u, v.Unlock(pass.span()));
    keymap[u.digest] = &u.key;
  }
  CatchStopSignals();
  const uint64_t left = st->data_size - st->done;
  Progress p(g.err, Progress::AutoMode(isatty(2), e.progress_json),
             engine::ModeName(st->mode), st->data_size, st->done);
  engine::EngineOptions eo;
  eo.hotzone_bytes = e.hotzone;
  eo.threads = e.threads;
  eo.stop = &g_stop;
  eo.progress = &p;
  Status s = engine::Run(v, keymap, eo);
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
  };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  AddPbkdfOptions(app, o->f.pbkdf);
  AddEngineOptions(app, o->e);
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
      return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1);
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
    DS_ASSIGN_OR_RETURN(SecureBuffer pass, ReadKey(*g.env, o->keys, "Enter new passphrase for " + dev + ": ", true));
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
    }
    DS_RETURN_IF_ERROR(g.env->Rename(tmp, o->dev.header));
    return ResumeOperation(g, o->dev, o->keys, o->e, &vk, digest);
  };
}

Runner SetupResume(CLI::App& app, Globals& g) {
  struct Opts { DeviceArgs dev; KeySource keys; EngineArgs e; };
  auto o = std::make_shared<Opts>();
  AddDeviceArgs(app, o->dev);
  AddKeyOptions(app, o->keys);
  AddEngineOptions(app, o->e);
  return [o, &g]() -> Status { return ResumeOperation(g, o->dev, o->keys, o->e, nullptr, -1); };
}

}  // namespace ds::cli

#!/usr/bin/env bash
# The Debian package as an admin meets it, in a fresh Debian 12 (debootstrap --variant=minbase
# bookworm) chroot: `apt install ./diskseal_*.deb`, files, units, man pages and completion in
# place; an upgrade to a higher version keeps the admin's configuration, enable's state records,
# keys and headers, and the vault's data; remove keeps them too; purge keeps the key and header
# of a volume whose device still exists (and says which), removes the rest, never the vault's
# data. systemd does not run in a chroot: units are checked by what deb-systemd-helper leaves
# (enablement symlinks), services are kept from starting by policy-rc.d.
#
# Usage: tests/pkg/package_test.sh BUILD_DIR (ctest runs it, label pkg). Needs root, debootstrap
# and the Debian mirror the host's apt uses (first run only): the chroot image, with the
# package's dependencies installed, is cached outside the checkout in
# ${DISKSEAL_IMAGE_CACHE:-/var/cache/diskseal-test}, keyed by suite, mirror and dependencies.
set -euo pipefail
src=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:?usage: package_test.sh BUILD_DIR}" && pwd)
cache=${DISKSEAL_IMAGE_CACHE:-/var/cache/diskseal-test}
suite=bookworm

fail() { echo "FAIL: $*" >&2; exit 1; }
step() { echo "== $* ($SECONDS s)"; }
[ "$(id -u)" = 0 ] || fail "needs root (chroot, debootstrap)"
command -v debootstrap >/dev/null || fail "debootstrap is missing (scripts/setup)"

work=$(mktemp -d /tmp/diskseal-pkgtest.XXXXXX)
root=$work/root
cleanup() {
  mountpoint -q "$root/proc" 2>/dev/null && umount "$root/proc"
  rm -rf "$work"
}
trap cleanup EXIT

step "two packages from the same build, the second a higher version (upgrade)"
"$src/scripts/package" --build-dir "$build" --out "$work/v1" --version 0.1.0+pkgtest1
"$src/scripts/package" --build-dir "$build" --out "$work/v2" --version 0.1.0+pkgtest2 --no-lintian
deb1=$work/v1/diskseal_0.1.0+pkgtest1_amd64.deb
deb2=$work/v2/diskseal_0.1.0+pkgtest2_amd64.deb
[ -f "$deb1" ] && [ -f "$deb2" ] || fail "scripts/package made no .deb"

# The mirror the host's apt uses (deb822 sources first, then sources.list).
mirror=${DISKSEAL_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
  mirror=$(sed -n 's/^URIs:[[:space:]]*\(.*\/debian\)\/\{0,1\}[[:space:]]*$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -n 1)
fi
if [ -z "$mirror" ]; then
  mirror=$(awk '$1 == "deb" && $2 ~ /\/debian\/?$/ {print $2; exit}' /etc/apt/sources.list 2>/dev/null)
fi
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
deps=$(dpkg-deb -f "$deb1" Depends)

step "chroot image ($suite minbase from $mirror, with the package's dependencies)"
key=$(printf '%s\n' "format 1" "$suite" minbase "$mirror" "$deps" | sha256sum | cut -c1-16)
image=$cache/$suite-minbase-$key.tar
mkdir -p "$cache"
(
  flock 9
  if [ ! -f "$image" ]; then
    img=$work/image
    debootstrap --variant=minbase "$suite" "$img" "$mirror" >"$work/debootstrap.log" 2>&1 ||
      { tail -n 30 "$work/debootstrap.log" >&2; fail "debootstrap $suite from $mirror failed"; }
    printf '#!/bin/sh\nexit 101\n' >"$img/usr/sbin/policy-rc.d"
    chmod 0755 "$img/usr/sbin/policy-rc.d"
    chroot "$img" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive chroot "$img" apt-get satisfy -y -qq --no-install-recommends "$deps" >/dev/null
    chroot "$img" apt-get clean
    tar -C "$img" -cf "$image.tmp" .
    mv "$image.tmp" "$image"
    rm -rf "$img"
  fi
) 9>"$cache/.lock"
mkdir "$root"
tar -C "$root" -xf "$image"
mount -t proc proc "$root/proc"
cp "$deb1" "$deb2" "$root/tmp/"
in_root() { chroot "$root" env DEBIAN_FRONTEND=noninteractive LC_ALL=C "$@"; }
apt_in_root() { in_root apt-get -y -q -o Dpkg::Options::=--force-confold "$@"; }

step "install: apt install ./diskseal_*.deb"
apt_in_root install "/tmp/$(basename "$deb1")" >"$work/install.log" 2>&1 || { cat "$work/install.log" >&2; fail "apt install"; }
[ "$(in_root dpkg-query -W -f '${Version}' diskseal)" = 0.1.0+pkgtest1 ] || fail "version 1 not installed"
in_root /usr/sbin/diskseal --version | grep -q '^diskseal ' || fail "/usr/sbin/diskseal does not run"
for f in /lib/systemd/system/diskseal-vault.service /lib/systemd/system/diskseal-resume.service \
         /etc/diskseal/diskseal.conf /etc/diskseal/vault.conf \
         /usr/share/bash-completion/completions/diskseal /usr/share/doc/diskseal/copyright; do
  [ -f "$root$f" ] || fail "$f is not installed"
done
grep -q '^ExecStart=/usr/sbin/diskseal resume --all$' "$root/lib/systemd/system/diskseal-resume.service" || fail "resume unit ExecStart"
grep -q '^ExecStart=/usr/sbin/diskseal vault serve ' "$root/lib/systemd/system/diskseal-vault.service" || fail "vault unit ExecStart"
# The resume unit is enabled (it runs at boot); the vault is not (most machines are clients).
[ -L "$root/etc/systemd/system/multi-user.target.wants/diskseal-resume.service" ] || fail "diskseal-resume.service is not enabled"
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/diskseal-vault.service" ] || fail "diskseal-vault.service is enabled"
in_root getent passwd diskseal-vault >/dev/null || fail "system user diskseal-vault missing"
# Upgrades restart the units where they run (a resume in progress stops at a commit point and the
# new binary continues it); remove stops them. systemd is not running here, so the scripts say it.
info=$root/var/lib/dpkg/info
for u in diskseal-vault diskseal-resume; do
  grep -q "deb-systemd-invoke try-restart '$u.service'" "$info/diskseal.postinst" || fail "postinst does not try-restart $u"
done
grep -q "deb-systemd-invoke stop diskseal-vault.service diskseal-resume.service" "$info/diskseal.prerm" || fail "prerm does not stop the units on remove"
[ "$(stat -c %a "$root/var/lib/diskseal")" = 700 ] || fail "/var/lib/diskseal is not 0700"
# A man page for diskseal and each command, as the binary's own table lists them.
mkdir "$work/man"
"$build/diskseal" --help-man "$work/man"
n=0
for page in "$work"/man/*.8; do
  [ -f "$root/usr/share/man/man8/$(basename "$page").gz" ] || fail "man page $(basename "$page") missing"
  n=$((n + 1))
done
((n > 20)) || fail "only $n man pages generated"
zcat "$root/usr/share/man/man8/diskseal-enable.8.gz" | grep -q 'volume\\-type' || fail "diskseal-enable(8) lacks --volume-type"
# Completion: loaded by bash, completes commands and a command's flags.
comp=$(in_root bash -c 'source /usr/share/bash-completion/completions/diskseal
  COMP_WORDS=(diskseal ena); COMP_CWORD=1; _diskseal; echo "${COMPREPLY[*]}"
  COMP_WORDS=(diskseal enable --volume-t); COMP_CWORD=2; _diskseal; echo "${COMPREPLY[*]}"')
[ "$comp" = $'enable\n--volume-type' ] || fail "bash completion gave: $comp"

step "the admin's configuration, enable's state and a vault's data"
# Configured machine: the file is read by the CLI (a malformed one names the line and the key).
printf 'vault = https://vault.test:8443\nvault-token-file = /etc/diskseal/vault.token\n' >>"$root/etc/diskseal/diskseal.conf"
printf 'state-dir = /var/lib/diskseal\nvualt = x\n' >"$root/tmp/bad.conf"
if out=$(in_root /usr/sbin/diskseal status --config /tmp/bad.conf 2>&1); then fail "a malformed --config was accepted"; fi
grep -q "/tmp/bad.conf:2: unknown key 'vualt'" <<<"$out" || fail "malformed config message: $out"
present=11111111-1111-4111-8111-111111111111
gone=22222222-2222-4222-8222-222222222222
mknod "$root/dev/dsk-present" b 7 250
record() {  # name device step: one record as machine/state.cc writes it
  cat <<EOT
{
  "name": "$1",
  "device": "$2",
  "mountpoint": "/data-$1",
  "fstype": "ext4",
  "mount_options": "rw,relatime",
  "header": "/var/lib/diskseal/headers/$1.luks2",
  "key_file": "/var/lib/diskseal/keys/$1.key",
  "resilience": "checksum",
  "secret_id": "",
  "loop": "",
  "step": "$3",
  "last_error": "",
  "run": {
    "index": 1,
    "size": 2
  },
  "rate": {
    "pid": 0,
    "done": 0,
    "total": 0,
    "mib_s": 0.0,
    "eta_s": 0.0,
    "updated": 0
  }
}
EOT
}
s=$root/var/lib/diskseal
mkdir -p -m 0700 "$s/volumes" "$s/keys" "$s/headers"
record $present /dev/dsk-present encrypting >"$s/volumes/$present.json"
record $gone /dev/dsk-gone configured >"$s/volumes/$gone.json"
for n in $present $gone; do
  head -c 64 /dev/urandom >"$s/keys/$n.key"
  head -c 16384 /dev/urandom >"$s/headers/$n.luks2"
done
mkdir -p -m 0700 "$root/var/lib/diskseal-vault"
head -c 32 /dev/urandom >"$root/var/lib/diskseal-vault/master.key"
head -c 4096 /dev/urandom >"$root/var/lib/diskseal-vault/vault.db"
in_root /usr/sbin/diskseal status --json >"$work/status1.json" || fail "status does not read the state"
grep -q "$present" "$work/status1.json" || fail "status does not show the volume record"
snapshot() { (cd "$root" && find var/lib/diskseal var/lib/diskseal-vault -type f -print0 | sort -z | xargs -0 sha256sum); }
snapshot >"$work/state.before"
conf_sum=$(sha256sum <"$root/etc/diskseal/diskseal.conf")

step "upgrade to 0.1.0+pkgtest2"
apt_in_root install "/tmp/$(basename "$deb2")" >"$work/upgrade.log" 2>&1 || { cat "$work/upgrade.log" >&2; fail "apt upgrade"; }
[ "$(in_root dpkg-query -W -f '${Version}' diskseal)" = 0.1.0+pkgtest2 ] || fail "version 2 not installed"
snapshot | diff "$work/state.before" - || fail "the upgrade changed state or vault files"
[ "$(sha256sum <"$root/etc/diskseal/diskseal.conf")" = "$conf_sum" ] || fail "the upgrade changed the admin's diskseal.conf"
[ -L "$root/etc/systemd/system/multi-user.target.wants/diskseal-resume.service" ] || fail "resume unit not enabled after upgrade"
in_root /usr/sbin/diskseal status --json | grep -q "$present" || fail "status after upgrade"

step "remove"
apt_in_root remove diskseal >"$work/remove.log" 2>&1 || { cat "$work/remove.log" >&2; fail "apt remove"; }
[ ! -e "$root/usr/sbin/diskseal" ] || fail "remove left the binary"
snapshot | diff "$work/state.before" - || fail "remove changed state or vault files"
[ -f "$root/etc/diskseal/diskseal.conf" ] || fail "remove deleted the configuration (a conffile)"

step "purge with one volume whose device exists"
apt_in_root purge diskseal >"$work/purge.log" 2>&1 || { cat "$work/purge.log" >&2; fail "apt purge"; }
grep -q "purge keeps /var/lib/diskseal/keys/$present.key and /var/lib/diskseal/headers/$present.luks2: volume $present on /dev/dsk-present still exists" "$work/purge.log" ||
  { cat "$work/purge.log" >&2; fail "purge did not name the volume it keeps"; }
grep -q "purge keeps /var/lib/diskseal-vault" "$work/purge.log" || fail "purge did not say it keeps the vault's data"
for f in keys/$present.key headers/$present.luks2 volumes/$present.json; do
  [ -f "$s/$f" ] || fail "purge deleted $f of a volume that exists"
done
for f in keys/$gone.key headers/$gone.luks2 volumes/$gone.json; do
  [ ! -e "$s/$f" ] || fail "purge kept $f of a volume that is gone"
done
grep "var/lib/diskseal-vault/" "$work/state.before" | (cd "$root" && sha256sum -c --quiet -) || fail "purge changed the vault's data"
[ ! -e "$root/etc/diskseal/diskseal.conf" ] || fail "purge kept diskseal.conf"
[ ! -e "$root/etc/systemd/system/multi-user.target.wants/diskseal-resume.service" ] || fail "purge left the resume unit enabled"

step "reinstall, the device gone, purge again: everything of diskseal's state goes"
rm "$root/dev/dsk-present"
apt_in_root install "/tmp/$(basename "$deb2")" >"$work/install2.log" 2>&1 || { cat "$work/install2.log" >&2; fail "reinstall"; }
apt_in_root purge diskseal >"$work/purge2.log" 2>&1 || { cat "$work/purge2.log" >&2; fail "second purge"; }
[ ! -e "$s" ] || { ls -lR "$s" >&2; fail "purge left /var/lib/diskseal although no volume exists"; }
[ -f "$root/var/lib/diskseal-vault/vault.db" ] || fail "purge deleted the vault's database"
step "ok"

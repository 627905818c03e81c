#!/bin/busybox sh
# The dwcp test guest's /init (PID 1 of a busybox initramfs).
#
# It prints "tick N MS" on the console (the serial port) about every 100 ms,
# N counting from 0 and MS the guest's uptime in milliseconds (from
# /proc/uptime: monotonic while the guest runs, 10 ms resolution), so a
# test can see the guest run, stop and go on after a migration. With
# dwcp.dirty_mib_s=R on the kernel command line it also rewrites R MiB of
# memory per second (random bytes, so a migration cannot send them as zero
# pages) over a working set of dwcp.dirty_set_mib MiB (default 32),
# catching up on time it lost, so live migration has real work. With
# dwcp.disk_marker=1 it first says what the start of its disk (/dev/vda)
# holds ("dwcp-guest: disk marker: ..."), then writes "dwcp-marker N" there
# with every tick (synced), so a copy of the disk (a DR backup) shows how
# far the guest had come when it was taken. The ACPI power button (QMP
# system_powerdown) powers the guest off.
#
# Everything it says besides the ticks starts with "dwcp-guest:".
/bin/busybox mkdir -p /proc /sys /dev /tmp
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null

# Drivers the kernel has as modules: virtio disk and balloon, the ACPI button and its input events.
while read -r module; do
  insmod "/lib/modules/$module" 2>/dev/null || echo "dwcp-guest: could not load $module"
done < /lib/modules/load-order
acpid -c /etc/acpi -l /tmp/acpid.log

rate=0
set_mib=32
marker=0
for arg in $(cat /proc/cmdline); do
  case "$arg" in
    dwcp.disk_marker=1) marker=1 ;;
    dwcp.dirty_mib_s=*) rate=${arg#dwcp.dirty_mib_s=} ;;
    dwcp.dirty_set_mib=*) set_mib=${arg#dwcp.dirty_set_mib=} ;;
  esac
done
case "$rate" in '' | *[!0-9]*) echo "dwcp-guest: dwcp.dirty_mib_s=$rate is not a whole number of MiB/s; not dirtying memory"; rate=0 ;; esac
case "$set_mib" in '' | 0 | *[!0-9]*) echo "dwcp-guest: dwcp.dirty_set_mib=$set_mib is not a whole number of MiB above 0; using 32"; set_mib=32 ;; esac

# Uptime in ms into $ms ("12.05" -> 12050; the leading 0 of "05" is dropped so it is not octal).
now_ms() {
  read -r up _ < /proc/uptime
  cs=${up#*.}
  cs=${cs#0}
  ms=$((${up%.*} * 1000 + cs * 10))
}

# Rewrites rate MiB/s in 64 KiB blocks, from a 4 MiB block of random bytes, cycling over the working set.
dirty() {
  set_blocks=$((set_mib * 16))
  dd if=/dev/urandom of=/tmp/dirty.src bs=65536 count=64 2>/dev/null
  now_ms
  start=$ms
  written=0
  off=0
  while :; do
    now_ms
    due=$(((ms - start) * rate * 16 / 1000))
    n=$((due - written))
    # More than a whole working set behind (a paused or starved guest): skip ahead rather than burst.
    if [ "$n" -gt "$set_blocks" ]; then
      written=$((due - set_blocks))
      n=$set_blocks
    fi
    while [ "$n" -gt 0 ]; do
      k=$n
      [ "$k" -gt 64 ] && k=64
      [ "$k" -gt $((set_blocks - off)) ] && k=$((set_blocks - off))
      dd if=/tmp/dirty.src of=/tmp/dirty bs=65536 count="$k" seek="$off" conv=notrunc 2>/dev/null
      off=$(((off + k) % set_blocks))
      n=$((n - k))
      written=$((written + k))
    done
    sleep 0.1
  done
}

echo "dwcp-guest: up, dirtying $rate MiB/s over $set_mib MiB"
[ "$rate" -gt 0 ] && dirty &

if [ "$marker" = 1 ]; then
  found=$(dd if=/dev/vda bs=512 count=1 2>/dev/null | tr -d '\000' | head -n 1)
  echo "dwcp-guest: disk marker: ${found:-none}"
fi

n=0
while :; do
  now_ms
  echo "tick $n $ms"
  [ "$marker" = 1 ] && printf 'dwcp-marker %s\n' "$n" | dd of=/dev/vda bs=512 count=1 conv=sync,fsync 2>/dev/null
  n=$((n + 1))
  sleep 0.1
done

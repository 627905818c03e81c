#!/bin/sh
# busybox acpid runs this on the ACPI power button (QMP system_powerdown): a clean power-off.
echo "dwcp-guest: power button: powering off" > /dev/console
sync
poweroff -f

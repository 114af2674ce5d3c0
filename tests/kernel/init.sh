#!/bin/busybox sh
# /init of the pyverity kernel-test initramfs: set up, run /mnt/run.sh from the test disk,
# power off. Results go to /mnt/results on the disk; the console shows run.sh's output between
# the markers. Never returns (a returning /init panics the kernel; panic=-1 then ends qemu).
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
while read -r m; do
    insmod "/modules/$m" || echo "insmod $m failed"
done < /modules/order
mkdir -p /host
grep -q hostroot /sys/bus/virtio/drivers/9pnet_virtio/*/mount_tag 2>/dev/null &&
    mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host
i=0
while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
if mount -t ext4 /dev/vda /mnt; then
    mkdir -p /mnt/results
    echo "@@PYVERITY-BEGIN"
    cd /mnt && sh /mnt/run.sh > /mnt/results/log 2>&1
    echo "exit $?" > /mnt/results/status
    cat /mnt/results/log
    cd /
    sync
    umount /mnt
    echo "@@PYVERITY-END"
else
    echo "cannot mount /dev/vda"
fi
poweroff -f

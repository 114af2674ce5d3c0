/*
 * vhelper: a tiny static helper run inside the test VM (busybox has no fs-verity or key
 * commands).  Built by tests/kernel/harness.py with `gcc -static -O2`.  Written for the
 * pyverity kernel conformance suite; every command prints one line and exits 0 on
 * success, or prints "ERR <errno> <name>" and exits 1.
 *
 *   vhelper enable FILE ALG BLOCKSIZE SALTHEX|-   FS_IOC_ENABLE_VERITY (ALG 1=sha256 2=sha512)
 *   vhelper measure FILE                          FS_IOC_MEASURE_VERITY -> "<alg#> <hex>"
 *   vhelper readmeta FILE TYPE OUT                FS_IOC_READ_VERITY_METADATA (1 tree, 2 desc)
 *   vhelper setxattr FILE NAME VALUEFILE          setxattr with the bytes of VALUEFILE
 *   vhelper addkey RING CERTFILE                  keyring RING in @u, add the X.509 cert to it
 *   vhelper read FILE                             open O_RDONLY and read it all -> "<bytes>"
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/fsverity.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/xattr.h>
#include <unistd.h>

#define KEY_SPEC_USER_KEYRING (-4)

static int fail(void)
{
	int e = errno;
	printf("ERR %d %s\n", e, strerror(e));
	return 1;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static unsigned char *slurp(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY);
	size_t cap = 1 << 16, n = 0;
	unsigned char *buf;

	if (fd < 0)
		return NULL;
	buf = malloc(cap);
	for (;;) {
		ssize_t r;

		if (n == cap)
			buf = realloc(buf, cap *= 2);
		r = read(fd, buf + n, cap - n);
		if (r < 0) {
			close(fd);
			return NULL;
		}
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	*len = n;
	return buf;
}

static int do_enable(char **argv)
{
	struct fsverity_enable_arg arg;
	unsigned char salt[64];
	size_t i, n = 0;
	int fd;

	memset(&arg, 0, sizeof(arg));
	arg.version = 1;
	arg.hash_algorithm = (uint32_t)atoi(argv[3]);
	arg.block_size = (uint32_t)atoi(argv[4]);
	if (strcmp(argv[5], "-") != 0) {
		n = strlen(argv[5]) / 2;
		if (n > sizeof(salt))
			n = sizeof(salt);
		for (i = 0; i < n; i++)
			salt[i] = (unsigned char)(hexval(argv[5][2 * i]) * 16 +
						  hexval(argv[5][2 * i + 1]));
		arg.salt_size = (uint32_t)n;
		arg.salt_ptr = (uintptr_t)salt;
	}
	fd = open(argv[2], O_RDONLY);
	if (fd < 0 || ioctl(fd, FS_IOC_ENABLE_VERITY, &arg) != 0)
		return fail();
	printf("OK\n");
	return 0;
}

static int do_measure(char **argv)
{
	unsigned char buf[sizeof(struct fsverity_digest) + 64];
	struct fsverity_digest *d = (struct fsverity_digest *)buf;
	int fd = open(argv[2], O_RDONLY);
	int i;

	d->digest_size = 64;
	if (fd < 0 || ioctl(fd, FS_IOC_MEASURE_VERITY, d) != 0)
		return fail();
	printf("%u ", d->digest_algorithm);
	for (i = 0; i < d->digest_size; i++)
		printf("%02x", d->digest[i]);
	printf("\n");
	return 0;
}

static int do_readmeta(char **argv)
{
	struct fsverity_read_metadata_arg arg;
	static unsigned char buf[1 << 16];
	int fd = open(argv[2], O_RDONLY);
	int out = open(argv[4], O_WRONLY | O_CREAT | O_TRUNC, 0644);
	uint64_t total = 0;

	if (fd < 0 || out < 0)
		return fail();
	for (;;) {
		int r;

		memset(&arg, 0, sizeof(arg));
		arg.metadata_type = (uint64_t)atoi(argv[3]);
		arg.offset = total;
		arg.length = sizeof(buf);
		arg.buf_ptr = (uintptr_t)buf;
		r = ioctl(fd, FS_IOC_READ_VERITY_METADATA, &arg);
		if (r < 0)
			return fail();
		if (r == 0)
			break;
		if (write(out, buf, (size_t)r) != r)
			return fail();
		total += (uint64_t)r;
	}
	if (close(out) != 0)
		return fail();
	printf("%llu\n", (unsigned long long)total);
	return 0;
}

static int do_setxattr(char **argv)
{
	size_t n;
	unsigned char *v = slurp(argv[4], &n);

	if (!v || setxattr(argv[2], argv[3], v, n, 0) != 0)
		return fail();
	printf("OK\n");
	return 0;
}

static int do_addkey(char **argv)
{
	size_t n;
	unsigned char *cert = slurp(argv[3], &n);
	long ring, key;

	if (!cert)
		return fail();
	ring = syscall(SYS_add_key, "keyring", argv[2], NULL, 0, KEY_SPEC_USER_KEYRING);
	if (ring < 0)
		return fail();
	key = syscall(SYS_add_key, "asymmetric", NULL, cert, n, ring);
	if (key < 0)
		return fail();
	printf("%ld %ld\n", ring, key);
	return 0;
}

static int do_read(char **argv)
{
	static unsigned char buf[1 << 16];
	int fd = open(argv[2], O_RDONLY);
	unsigned long long total = 0;
	ssize_t r;

	if (fd < 0)
		return fail();
	while ((r = read(fd, buf, sizeof(buf))) > 0)
		total += (unsigned long long)r;
	if (r < 0)
		return fail();
	printf("%llu\n", total);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int argc;
		int (*fn)(char **);
	} cmds[] = {
		{ "enable", 6, do_enable },	{ "measure", 3, do_measure },
		{ "readmeta", 5, do_readmeta }, { "setxattr", 5, do_setxattr },
		{ "addkey", 4, do_addkey },	{ "read", 3, do_read },
	};
	size_t i;

	setvbuf(stdout, NULL, _IOLBF, 0);
	for (i = 0; argc > 1 && i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(argv[1], cmds[i].name) == 0 && argc == cmds[i].argc)
			return cmds[i].fn(argv);
	fprintf(stderr, "usage: vhelper enable|measure|readmeta|setxattr|addkey|read ...\n");
	return 2;
}

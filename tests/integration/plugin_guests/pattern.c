/* Known access pattern for the emu plugin tests: page i of a fresh 16-page
 * mapping gets i+1 word writes, then 2*i word reads; then madvise, a marker,
 * munmap.  Prints the region address so the test can find its pages. */
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>
#include "../../../guest/emu_mark.h"

#define NPAGES 16
#define PAGE 4096

int main(void)
{
	volatile uint64_t *r = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r == MAP_FAILED)
		return 1;
	for (int i = 0; i < NPAGES; i++)
		for (int k = 0; k <= i; k++)
			r[i * (PAGE / 8) + k] = k;
	uint64_t sum = 0;
	for (int i = 0; i < NPAGES; i++)
		for (int k = 0; k < 2 * i; k++)
			sum += r[i * (PAGE / 8) + (k % 8)];
	madvise((void *)r, 2 * PAGE, MADV_DONTNEED);
	emu_mark(7);
	munmap((void *)r, NPAGES * PAGE);
	printf("region=%lu sum=%lu\n", (unsigned long)r, (unsigned long)sum);
	return 5;
}

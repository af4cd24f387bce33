/* A guest that closes every descriptor above stderr (the plugin's stream
 * descriptor among them) and then keeps making page-changing accesses, so
 * the plugin has much more to write after the reader has seen the end. */
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define NPAGES 64
#define PAGE 4096

int main(void)
{
	for (int fd = 3; fd < 1024; fd++)
		close(fd);
	volatile uint64_t *r = mmap(NULL, NPAGES * PAGE, PROT_READ | PROT_WRITE,
				    MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (r == MAP_FAILED)
		return 1;
	for (int n = 0; n < 200000; n++)
		r[(n * 7 % NPAGES) * (PAGE / 8)] += n;
	return 7;
}

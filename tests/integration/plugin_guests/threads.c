/* Threads for the emu plugin tests: 3 concurrent workers, then 2 more one
 * after the other (their vCPU index is reused). */
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>

static volatile uint64_t shared[4096] __attribute__((aligned(4096)));

static void *work(void *arg)
{
	long id = (long)arg;
	for (int k = 0; k < 20000; k++)
		shared[(id * 512 + k) % 4096] += k;
	return NULL;
}

int main(void)
{
	pthread_t t[3];
	for (long i = 0; i < 3; i++)
		pthread_create(&t[i], NULL, work, (void *)i);
	for (int i = 0; i < 3; i++)
		pthread_join(t[i], NULL);
	for (long i = 3; i < 5; i++) {
		pthread_t u;
		pthread_create(&u, NULL, work, (void *)i);
		pthread_join(u, NULL);
	}
	printf("shared=%lu\n", (unsigned long)shared);
	return 0;
}

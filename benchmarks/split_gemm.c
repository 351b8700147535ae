/* Issue 14's question, alone: per time step, is the recurrent GEMM of a 2-thread LSTM faster split by rows
 * (each thread M = B/2 rows, all N = 4H gate columns: what lstm_cpu.c does) or by hidden units (each thread all
 * M = B rows, N = 4H/2 columns: the four gate blocks of its H/2 units, then a barrier for h_{t-1})?
 * MKL's packed sgemm taken from libtorch_cpu as lstm_cpu.c takes it (addresses handed over by bench_split.py);
 * one MKL thread per OpenMP thread. Both splits pack their own B once, then run `steps` GEMMs; the unit split
 * waits at a barrier after each (what its h_{t-1} exchange would cost at the least). */
#include <omp.h>
#include <stdlib.h>
#include <stddef.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112, PACKED = 151, B_MATRIX = 162 };
typedef size_t (*pack_get_size_fn)(int, int, int, int);
typedef void (*pack_fn)(int, int, int, int, int, int, float, const float *, int, float *);
typedef void (*compute_fn)(int, int, int, int, int, int, const float *, int, const float *, int, float, float *, int);
typedef int (*set_threads_local_fn)(int);

/* seconds per step; M, N: each thread's GEMM; K: the reduction (P); barrier: 1 for a barrier after every step */
double split_gemm(void *get_size, void *pack, void *compute, void *set_local, int threads, int M, int N, int K,
                  int steps, int barrier) {
    double elapsed = 0.0;
#pragma omp parallel num_threads(threads)
    {
        ((set_threads_local_fn)set_local)(1);
        float *a = malloc(sizeof(float) * (size_t)M * K), *c = malloc(sizeof(float) * (size_t)M * N);
        float *b = malloc(sizeof(float) * (size_t)K * N);
        for (size_t k = 0; k < (size_t)M * K; k++) a[k] = (float)(k % 7) * 0.01f;
        for (size_t k = 0; k < (size_t)K * N; k++) b[k] = (float)(k % 5) * 0.01f;
        for (size_t k = 0; k < (size_t)M * N; k++) c[k] = 0.0f;
        float *packed = malloc(((pack_get_size_fn)get_size)(B_MATRIX, M, N, K));
        ((pack_fn)pack)(ROW_MAJOR, B_MATRIX, NO_TRANS, M, N, K, 1.0f, b, N, packed);
        for (int s = 0; s < 20; s++)  /* warm-up */
            ((compute_fn)compute)(ROW_MAJOR, NO_TRANS, PACKED, M, N, K, a, K, packed, N, 1.0f, c, N);
#pragma omp barrier
        double start = omp_get_wtime();
        for (int s = 0; s < steps; s++) {
            ((compute_fn)compute)(ROW_MAJOR, NO_TRANS, PACKED, M, N, K, a, K, packed, N, 1.0f, c, N);
            if (barrier) {
#pragma omp barrier
            }
        }
#pragma omp barrier
#pragma omp master
        elapsed = (omp_get_wtime() - start) / steps;
        free(packed); free(a); free(b); free(c);
    }
    return elapsed;
}

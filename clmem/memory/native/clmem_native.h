/* Shared by every kernel source: the precision of one compilation, the names it exports, flush-to-zero.

   Each source is compiled twice, with -DCLMEM_DOUBLE=0 (float) and -DCLMEM_DOUBLE=1 (double), and both objects are
   linked into one library (see clmem/memory/_native_build.py): `real` is the element type of that compilation and
   EXPORT(name) the exported symbol name_f32 or name_f64. Static helpers need no suffix (one precision per file). */
#ifndef CLMEM_NATIVE_H
#define CLMEM_NATIVE_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if !defined(CLMEM_DOUBLE)
#error "compile with -DCLMEM_DOUBLE=0 (float) or -DCLMEM_DOUBLE=1 (double)"
#elif CLMEM_DOUBLE
typedef double real;
typedef uint64_t real_bits; /* an unsigned integer of the same width (radix sort keys) */
#define SQRT sqrt
#define EXP exp
#define LOG1P log1p
#define SUFFIX f64
#else
typedef float real;
typedef uint32_t real_bits;
#define SQRT sqrtf
#define EXP expf
#define LOG1P log1pf
#define SUFFIX f32
#endif

#define CLMEM_CAT_(a, b) a##_##b
#define CLMEM_CAT(a, b) CLMEM_CAT_(a, b)
#define EXPORT(name) CLMEM_CAT(name, SUFFIX)

/* denormals (tiny products of weights) are flushed to zero inside the kernels: x86 handles them in slow microcode */
#if defined(__SSE__)
#include <xmmintrin.h>
#define FTZ_BEGIN const unsigned int csr_ = _mm_getcsr(); _mm_setcsr(csr_ | 0x8040);
#define FTZ_END _mm_setcsr(csr_);
#else
#define FTZ_BEGIN
#define FTZ_END
#endif

#endif

// Activations by integer code, in the order of kern.params.ACTIVATIONS.
#pragma once

// -inf and -FLT_MAX without <math.h> or <float.h>, which NVRTC (cupy.RawModule) does not include.
#define NEG_INF __int_as_float(0xff800000)
#define NEG_FLT_MAX __int_as_float(0xff7fffff)

#define ACT_LINEAR 0
#define ACT_LEAKY 1
#define ACT_RELU 2
#define ACT_LOGISTIC 3
#define ACT_TANH 4

__device__ __forceinline__ float activate(float v, int act) {
    switch (act) {
        case ACT_LEAKY: return v > 0.f ? v : 0.1f * v;
        case ACT_RELU: return v > 0.f ? v : 0.f;
        case ACT_LOGISTIC: return 1.f / (1.f + expf(-v));
        case ACT_TANH: return tanhf(v);
        default: return v;
    }
}

// d activation / d x from the OUTPUT y, as Darknet's gradient_array takes it (training).
__device__ __forceinline__ float activation_gradient(float y, int act) {
    switch (act) {
        case ACT_LEAKY: return y > 0.f ? 1.f : 0.1f;
        case ACT_RELU: return y > 0.f ? 1.f : 0.f;
        case ACT_LOGISTIC: return (1.f - y) * y;
        case ACT_TANH: return 1.f - y * y;
        default: return 1.f;
    }
}

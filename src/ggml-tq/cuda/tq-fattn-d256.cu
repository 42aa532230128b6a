// llama-tq: flash-attention decode instances for head size 256 (see tq-fattn.cuh)
#include "tq-fattn-impl.cuh"

#define X(K, V) TQ_FA_INSTANCE_NC(256, K, V, 2) TQ_FA_INSTANCE_NC(256, K, V, 4)  // 4 columns at most (registers)
TQ_FA_PAIRS(X)
#undef X

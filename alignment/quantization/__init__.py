"""Weight-only int8 / int4 quantization of the decoder's parameter tree (round trip to float)."""

from alignment.quantization.weights import (
    INT4_GROUP, LAYOUTS, ROUND_TRIP_SCHEMES, SCHEMES, check_round_trip, QuantizedSize, is_quantized_weight, quantization_scales,
    quantize_params, quantized_size)

"""The policy's side of a step: the KV-cache sampler (`sampling`, its per-step state
`decode_state`, `next_token`), the decoding head layout, and the hints
it writes (`hints`)."""

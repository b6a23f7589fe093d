"""Pure jnp mathematics of the zoo: arrays in, arrays out, no Flax, no state, no I/O."""

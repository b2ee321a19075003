"""Homomorphic-encryption schemes behind one small interface (CKKS, Paillier, plaintext)."""

"""sipushd.core"""

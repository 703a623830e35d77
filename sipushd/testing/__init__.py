"""sipushd.testing"""

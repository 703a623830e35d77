"""sipushd.store"""

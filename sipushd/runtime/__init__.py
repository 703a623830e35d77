"""sipushd.runtime"""

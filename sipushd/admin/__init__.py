"""sipushd.admin"""

tag "q\"uote" when remark == "a\"b\\c" and remark != "tab	raw" and remark != "\t\n"
tag "\u6C89\u7761" when city == "\u5317\u4eac" and remark != "zero\u200bwidth" and remark != "ideo\u3000space"
tag "ctl" when remark == "\u0001\u007f\u00a0\u2028\ufeff" and remark == "é😀"
let money = 5000.00 + 0.50 + 10.0 + 007 + 1.000
let spans = 2w + 007d + 0h + 90m + 30s
let flags = [true, false]
tag "空" when remark == "" or remark == " "
